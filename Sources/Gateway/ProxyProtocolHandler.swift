import NIOCore
import Proto

/// Where a client connection really comes from: its peer, or what the PROXY protocol header
/// said (`--proxy-protocol`). Shared by the handlers of one channel, on its event loop.
final class ClientOrigin {
    var address: SocketAddress?

    init(_ address: SocketAddress?) {
        self.address = address
    }
}

/// First in a gateway connection's pipeline behind an L4 balancer: reads the PROXY header
/// (v1 or v2), records the client it names, hands on what follows it and leaves. A connection
/// whose first bytes are not a valid header, or that sends none within its deadline, is closed.
final class ProxyProtocolHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let origin: ClientOrigin
    private var buffered: ByteBuffer?
    private var timer: Scheduled<Void>?
    static let deadline = TimeAmount.seconds(5)

    init(origin: ClientOrigin) {
        self.origin = origin
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        timer = context.eventLoop.scheduleTask(in: Self.deadline) { channel.close(promise: nil) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var chunk = unwrapInboundIn(data)
        if buffered == nil { buffered = chunk } else { buffered!.writeBuffer(&chunk) }
        let bytes = buffered!
        switch ProxyHeader.parse(bytes.readableBytesView) {
        case .incomplete:
            if bytes.readableBytes > 16 + 512 { context.close(promise: nil) }
        case .invalid:
            buffered = nil
            context.close(promise: nil)
        case let .header(length, client):
            if let client, let address = try? SocketAddress(ipAddress: client.host, port: client.port) {
                origin.address = address
            }
            var rest = bytes
            rest.moveReaderIndex(forwardBy: length)
            buffered = nil
            timer?.cancel()
            if rest.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(rest)) }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }
}
