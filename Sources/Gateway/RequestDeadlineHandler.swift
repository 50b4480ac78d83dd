import NIOCore

/// Bounds how long a client may take to send one request (head and body),
/// and the TLS handshake plus first request: a slowloris client that drips
/// bytes is closed at the deadline, however often it sends.
final class RequestDeadlineHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let limit: TimeAmount
    private var timer: Scheduled<Void>?
    private var context: ChannelHandlerContext?

    init(limit: TimeAmount) {
        self.limit = limit
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        arm(context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if timer == nil { arm(context) }
        context.fireChannelRead(data)
    }

    /// This request may take `time` from now in all (an upload, sized by its Content-Length).
    func allow(_ time: TimeAmount) {
        guard let context, time > limit else { return }
        timer?.cancel()
        let channel = context.channel
        timer = context.eventLoop.scheduleTask(in: time) { channel.close(promise: nil) }
    }

    /// The request is complete: the next deadline starts with its first byte.
    func requestComplete() {
        timer?.cancel()
        timer = nil
    }

    private func arm(_ context: ChannelHandlerContext) {
        let channel = context.channel
        timer = context.eventLoop.scheduleTask(in: limit) { channel.close(promise: nil) }
    }
}
