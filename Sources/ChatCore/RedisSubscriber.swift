import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle

/// Delivers pub/sub pushes to a callback. An error reply (a refused AUTH, a refused
/// SUBSCRIBE) closes the connection, so the subscriber retries with backoff and says why,
/// instead of sitting on a link that will never deliver.
final class SubscriberHandler: ChannelInboundHandler {
    typealias InboundIn = RESPValue
    let onMessage: @Sendable (String, String) -> Void
    let onSubscribed: @Sendable (Int) -> Void
    let onError: @Sendable (String) -> Void

    init(onMessage: @escaping @Sendable (String, String) -> Void, onSubscribed: @escaping @Sendable (Int) -> Void,
         onError: @escaping @Sendable (String) -> Void = { _ in }) {
        self.onMessage = onMessage
        self.onSubscribed = onSubscribed
        self.onError = onError
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let value = unwrapInboundIn(data)
        if case let .error(message) = value {
            onError(message)
            context.close(promise: nil)
            return
        }
        guard let items = value.array, let kind = items.first?.string else { return }
        switch kind {
        case "message" where items.count == 3:
            if let channel = items[1].string, let payload = items[2].string { onMessage(channel, payload) }
        case "subscribe" where items.count == 3:
            onSubscribed(Int(items[2].int ?? 0))
        default:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// One pub/sub connection (RESP2 needs its own) that re-subscribes after any loss.
/// `onState(true)` is called once all channels are subscribed again, `onState(false)` when the link drops.
public final class RedisSubscriber: Service, Sendable {
    public let endpoint: Endpoint
    private let channels: [String]
    private let group: EventLoopGroup
    private let password: String?
    private let user: String?
    private let tls: RedisTLS?
    private let logger: Logger
    private let onMessage: @Sendable (String, String) -> Void
    private let onState: @Sendable (Bool) -> Void
    private let current = NIOLockedValueBox<Channel?>(nil)

    public init(endpoint: Endpoint, password: String? = nil, user: String? = nil, tls: RedisTLS? = nil, channels: [String], group: EventLoopGroup, logger: Logger,
                onMessage: @escaping @Sendable (String, String) -> Void,
                onState: @escaping @Sendable (Bool) -> Void) {
        self.endpoint = endpoint
        self.channels = channels
        self.password = password
        self.user = user
        self.tls = tls
        self.group = group
        self.logger = logger
        self.onMessage = onMessage
        self.onState = onState
    }

    public func run() async throws {
        let channelCount = channels.count, channels = self.channels
        let onState = self.onState, onMessage = self.onMessage, logger = self.logger, endpoint = self.endpoint
        let group = self.group, password = self.password, user = self.user, tls = self.tls
        await Reconnector(what: "redis subscription", endpoint: endpoint, logger: logger, base: 0.05, cap: 2, current: current).run(
            connect: {
                try await RedisClient.connect(endpoint: endpoint, group: group) { ch in
                    if let tls { try ch.pipeline.syncOperations.addHandler(try tls.handler()) }
                    try ch.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(RESPDecoder()),
                        MessageToByteHandler(RESPEncoder()),
                        SubscriberHandler(onMessage: onMessage, onSubscribed: { n in
                            if n == channelCount { onState(true) }
                        }, onError: { message in
                            // The reply's first word only (e.g. WRONGPASS, NOAUTH): never a secret.
                            let code = message.split(separator: " ").first.map(String.init) ?? "ERR"
                            logger.error("redis refused the subscription", metadata: ["redis": "\(endpoint)", "reply": "\(code)"])
                        }),
                    ])
                }
            },
            established: { ch in
                // Replies come back in order: a refused AUTH is read (and closes the link) before SUBSCRIBE's.
                if let password { ch.write(RedisClient.authCommand(user: user, password: password), promise: nil) }
                try await ch.writeAndFlush(["SUBSCRIBE"] + channels)
            },
            ended: { onState(false) })
    }
}
