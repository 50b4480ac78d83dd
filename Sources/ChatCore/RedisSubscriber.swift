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
    let onSubscribed: @Sendable (String) -> Void
    let onError: @Sendable (String) -> Void
    /// The reply to `ROLE`, sent first with Sentinels: anything but the primary closes the link.
    let checkRole: Bool
    /// A `PING` this often; a link silent for three of them is closed (a cut network closes
    /// nothing, and a subscription only reads).
    let keepalive: TimeAmount?
    private var lastRead = NIODeadline.now()
    private var keepaliveTask: RepeatedTask?

    init(onMessage: @escaping @Sendable (String, String) -> Void, onSubscribed: @escaping @Sendable (String) -> Void,
         onError: @escaping @Sendable (String) -> Void = { _ in }, checkRole: Bool = false, keepalive: TimeAmount? = nil) {
        self.checkRole = checkRole
        self.keepalive = keepalive
        self.onMessage = onMessage
        self.onSubscribed = onSubscribed
        self.onError = onError
    }

    func channelActive(context: ChannelHandlerContext) {
        lastRead = context.eventLoop.now
        if let every = keepalive {
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            keepaliveTask = context.eventLoop.scheduleRepeatedTask(initialDelay: every, delay: every) { _ in
                let (h, context) = bound.value
                if context.eventLoop.now - h.lastRead > .nanoseconds(every.nanoseconds * 3) {
                    context.close(promise: nil)
                    return
                }
                context.writeAndFlush(NIOAny(["PING"] as [String]), promise: nil)
            }
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        keepaliveTask?.cancel()
        keepaliveTask = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastRead = context.eventLoop.now
        let value = unwrapInboundIn(data)
        if case let .error(message) = value {
            onError(message)
            context.close(promise: nil)
            return
        }
        guard let items = value.array, let kind = items.first?.string else { return }
        switch kind {
        case "slave" where checkRole, "sentinel" where checkRole:
            onError("ROLE \(kind): not the primary")
            context.close(promise: nil)
        case "message" where items.count == 3:
            if let channel = items[1].string, let payload = items[2].string { onMessage(channel, payload) }
        case "subscribe" where items.count == 3:
            if let channel = items[1].string { onSubscribed(channel) }
        default:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// One pub/sub connection (RESP2 needs its own) that re-subscribes after any loss.
/// `channels` are always subscribed; others come and go with `subscribe`/`unsubscribe`
/// (a worker's rooms and users). `onState(true)` is called once the fixed channels are
/// subscribed again, `onState(false)` when the link drops; `onSubscribed` for every
/// channel's confirmation (also after a reconnect), so its owner knows from when on a
/// channel's messages arrive.
public final class RedisSubscriber: Service, Sendable {
    public let endpoint: Endpoint?
    /// Where it connects, as the logs name it.
    private let place: String
    private let resolve: @Sendable () async throws -> Endpoint
    private let what: String
    private let checkRole: Bool
    private let channels: [String]
    private let wanted = NIOLockedValueBox<Set<String>>([])
    private let onSubscribed: @Sendable (String) -> Void
    private let group: EventLoopGroup
    private let password: String?
    private let user: String?
    private let tls: RedisTLS?
    private let logger: Logger
    private let onMessage: @Sendable (String, String) -> Void
    private let onState: @Sendable (Bool) -> Void
    private let current = NIOLockedValueBox<Channel?>(nil)
    /// The locator's count of `+switch-master` heard (0 without one).
    private let switchCount: @Sendable () -> Int

    public init(endpoint: Endpoint, password: String? = nil, user: String? = nil, tls: RedisTLS? = nil, channels: [String], group: EventLoopGroup, logger: Logger,
                onMessage: @escaping @Sendable (String, String) -> Void,
                onSubscribed: @escaping @Sendable (String) -> Void = { _ in },
                onState: @escaping @Sendable (Bool) -> Void, locator: RedisLocator? = nil) {
        let locator = locator ?? RedisLocator(fixed: endpoint)
        self.onSubscribed = onSubscribed
        self.endpoint = endpoint
        // With Sentinels the fixed endpoint is unused: name what it follows instead.
        self.place = locator.usesSentinels ? "the primary the Sentinels name" : endpoint.description
        self.resolve = { [group, logger] in try await locator.primary(group: group, logger: logger) }
        self.switchCount = { locator.switchCount }
        self.what = "redis subscription"
        self.checkRole = locator.usesSentinels
        self.channels = channels
        self.password = password
        self.user = user
        self.tls = tls
        self.group = group
        self.logger = logger
        self.onMessage = onMessage
        self.onState = onState
    }

    /// A subscription to wherever `resolve` says, now and after every loss (a Sentinel's
    /// channels: AUTH only with `password`, no role check unless asked).
    public init(resolve: @escaping @Sendable () async throws -> Endpoint, what: String, channels: [String], checkRole: Bool,
                password: String? = nil, user: String? = nil, place: String? = nil,
                group: EventLoopGroup, logger: Logger, onMessage: @escaping @Sendable (String, String) -> Void,
                onState: @escaping @Sendable (Bool) -> Void) {
        self.endpoint = nil
        self.place = place ?? what
        self.resolve = resolve
        self.switchCount = { 0 }
        self.what = what
        self.checkRole = checkRole
        self.channels = channels
        self.onSubscribed = { _ in }
        self.password = password
        self.user = user
        self.tls = nil
        self.group = group
        self.logger = logger
        self.onMessage = onMessage
        self.onState = onState
    }

    /// Drops the connection (the next one asks where the primary is): after `+switch-master`.
    public func reconnect() {
        current.withLockedValue { $0 }?.close(promise: nil)
    }

    /// Subscribes to more channels, now and after every reconnect.
    public func subscribe(_ more: [String]) {
        guard !more.isEmpty else { return }
        wanted.withLockedValue { $0.formUnion(more) }
        current.withLockedValue { $0 }?.writeAndFlush(["SUBSCRIBE"] + more, promise: nil)
    }

    /// Stops the messages of channels given to `subscribe`.
    public func unsubscribe(_ gone: [String]) {
        guard !gone.isEmpty else { return }
        wanted.withLockedValue { $0.subtract(gone) }
        current.withLockedValue { $0 }?.writeAndFlush(["UNSUBSCRIBE"] + gone, promise: nil)
    }

    public func run() async throws {
        let channels = self.channels, fixed = Set(channels), wanted = self.wanted, onSubscribed = self.onSubscribed
        let onState = self.onState, onMessage = self.onMessage, logger = self.logger
        let group = self.group, password = self.password, user = self.user, tls = self.tls
        let resolve = self.resolve, checkRole = self.checkRole, switchCount = self.switchCount
        let switchesBefore = NIOLockedValueBox(0)
        await Reconnector(what: what, place: place, logger: logger, base: 0.05, cap: 2, current: current).run(
            connect: {
                // The fixed channels confirmed on this connection: all of them is "up".
                let confirmed = NIOLockedValueBox<Set<String>>([])
                switchesBefore.withLockedValue { $0 = switchCount() }
                let endpoint = try await resolve()
                return try await RedisClient.connect(endpoint: endpoint, group: group) { ch in
                    if let tls { try ch.pipeline.syncOperations.addHandler(try tls.handler()) }
                    try ch.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(RESPDecoder()),
                        MessageToByteHandler(RESPEncoder()),
                        SubscriberHandler(onMessage: onMessage, onSubscribed: { channel in
                            if fixed.contains(channel) {
                                let all = confirmed.withLockedValue { c -> Bool in
                                    let before = c.count
                                    c.insert(channel)
                                    return c.count == fixed.count && before < fixed.count
                                }
                                if all { onState(true) }
                            }
                            onSubscribed(channel)
                        }, onError: { message in
                            // The reply's first word only (e.g. WRONGPASS, NOAUTH): never a secret.
                            let code = message.split(separator: " ").first.map(String.init) ?? "ERR"
                            logger.error("redis refused the subscription", metadata: ["redis": "\(endpoint)", "reply": "\(code)"])
                        }, checkRole: checkRole, keepalive: .seconds(1)),
                    ])
                }
            },
            established: { ch in
                // A +switch-master heard while connecting: this may be the old primary (from
                // here on, `reconnect()` finds the channel and closes it).
                guard switchCount() == switchesBefore.withLockedValue({ $0 }) else {
                    logger.warning("Sentinel switched the primary while connecting; asking again")
                    throw RedisError.unavailable
                }
                // Replies come back in order: a refused AUTH is read (and closes the link) before SUBSCRIBE's.
                if let password { ch.write(RedisClient.authCommand(user: user, password: password), promise: nil) }
                if checkRole { ch.write(["ROLE"], promise: nil) }
                try await ch.writeAndFlush(["SUBSCRIBE"] + channels + wanted.withLockedValue { Array($0) })
            },
            ended: { onState(false) })
    }
}
