import ChatCore
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import ServiceLifecycle

/// The public listener: TLS, HTTP/1.1, the web client, the API and `/ws` hand-offs.
struct GatewayService: Service {
    let host: String
    let port: Int
    let tls: NIOSSLContext
    let ctx: GatewayContext
    let group: EventLoopGroup
    let logger: Logger

    static let decoderLimits: NIOHTTPDecoderLimitConfiguration = {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderFieldSize = 8 * 1024
        limits.maxHeaderListSize = 16 * 1024
        limits.maxHeaderFieldCount = 100
        return limits
    }()

    func run() async throws {
        let ctx = self.ctx, tls = self.tls
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // Several gateway processes may share the port.
            .serverChannelOption(ChannelOptions.Types.SocketOption(level: .socket, name: NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator.chatStream)
            .childChannelInitializer { channel in
                ctx.connections.add(channel)
                return channel.eventLoop.makeCompletedFuture {
                    let decoder = ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes,
                                                                          limitConfiguration: Self.decoderLimits))
                    let encoder = HTTPResponseEncoder()
                    let pipelining = HTTPServerPipelineHandler()
                    let errors = HTTPServerProtocolErrorHandler()
                    let idle = IdleStateHandler(readTimeout: .seconds(30))
                    let deadline = RequestDeadlineHandler(limit: ctx.requestTimeout)
                    let sync = channel.pipeline.syncOperations
                    let origin = ClientOrigin(channel.remoteAddress)
                    if ctx.proxyProtocol { try sync.addHandler(ProxyProtocolHandler(origin: origin)) }
                    try sync.addHandler(idle)
                    try sync.addHandler(NIOSSLServerHandler(context: tls))
                    try sync.addHandlers([deadline, decoder, encoder, pipelining, errors])
                    try sync.addHandler(GatewayHTTPHandler(ctx: ctx, deadline: deadline, origin: origin,
                                                           httpHandlers: [pipelining, errors, encoder, idle, deadline, decoder]))
                }
            }
        let server = try await bootstrap.bind(host: host, port: port).get()
        logger.info("gateway listening", metadata: ["address": "https://\(host):\(server.localAddress?.port ?? port)"])
        try? await gracefulShutdown()
        // Stop accepting; idle HTTP connections go now; WebSocket streams are closed by
        // their draining workers (1012), which we wait for up to a bound.
        try? await server.close()
        ctx.connections.closeIdle()
        let deadline = ContinuousClock.now + .seconds(15)
        while ctx.connections.count > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
            ctx.connections.closeIdle()
        }
        ctx.connections.closeAll()
        logger.info("gateway stopped")
    }
}
