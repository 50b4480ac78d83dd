import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle

/// Where the Redis primary is: one fixed address (`--redis-url`), or whatever the Sentinels
/// (`--redis-sentinels`) say the primary of `--redis-master-name` is, asked afresh on
/// every connection. The Sentinels are tried in turn, each for at most a second.
public struct RedisLocator: Sendable {
    public let fixed: Endpoint
    public let sentinels: [Endpoint]
    public let masterName: String
    /// `AUTH` for the Sentinels themselves (their `requirepass`, or an ACL user of theirs).
    public let sentinelPassword: String?
    public let sentinelUser: String?
    private let nextSentinel = NIOLockedValueBox(0)
    /// How many `+switch-master` this process has heard: a connection made while one arrives
    /// (its channel not yet there to be closed) sees the count change and looks again.
    private let switches = NIOLockedValueBox(0)

    public var switchCount: Int { switches.withLockedValue { $0 } }

    public func noteSwitch() { switches.withLockedValue { $0 += 1 } }

    public init(fixed: Endpoint, sentinels: [Endpoint] = [], masterName: String = "sc", sentinelPassword: String? = nil, sentinelUser: String? = nil) {
        self.fixed = fixed
        self.sentinels = sentinels
        self.masterName = masterName
        self.sentinelPassword = sentinelPassword
        self.sentinelUser = sentinelUser
    }

    public var usesSentinels: Bool { !sentinels.isEmpty }

    /// From `--redis-sentinels host:port,…`, `--redis-master-name` (default `sc`) and
    /// `--redis-sentinel-password`/`--redis-sentinel-user`.
    public static func from(options: Options, fixed: Endpoint) throws -> RedisLocator {
        let list = (options.string("redis-sentinels") ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let sentinels = try list.map { try Endpoint(parsing: $0) }
        let name = options.string("redis-master-name", default: "sc")
        guard !name.isEmpty, name.utf8.count <= 64 else { throw Options.Invalid("--redis-master-name must be 1 to 64 bytes") }
        return RedisLocator(fixed: fixed, sentinels: sentinels, masterName: name,
                            sentinelPassword: options.string("redis-sentinel-password"), sentinelUser: options.string("redis-sentinel-user"))
    }

    /// The next Sentinel to ask (each caller starts where the last one left off).
    func sentinel() -> Endpoint {
        let k = nextSentinel.withLockedValue { n -> Int in
            defer { n = (n + 1) % sentinels.count }
            return n
        }
        return sentinels[k]
    }

    /// The primary's address now: the one most Sentinels name, a majority of them (a Sentinel
    /// that was cut off may still name a primary the others replaced; following it would split
    /// the writes). No majority: unavailable, and the caller tries again.
    public func primary(group: EventLoopGroup, logger: Logger) async throws -> Endpoint {
        guard usesSentinels else { return fixed }
        var votes: [Endpoint: Int] = [:]
        for _ in 0..<sentinels.count {
            let s = sentinel()
            do {
                let reply = try await Self.ask(s, ["SENTINEL", "get-master-addr-by-name", masterName], group: group,
                                               auth: sentinelPassword.map { RedisClient.authCommand(user: sentinelUser, password: $0) })
                if let parts = reply.array, parts.count == 2, let host = parts[0].string, let port = parts[1].string.flatMap(Int.init) {
                    votes[.tcp(host: host, port: port), default: 0] += 1
                } else {
                    logger.warning("a Sentinel does not know the primary", metadata: ["sentinel": "\(s)", "master": "\(masterName)"])
                }
            } catch let error as RedisError where error.isAuthFailure {
                logger.error("a Sentinel refused the password (--redis-sentinel-password)", metadata: ["sentinel": "\(s)"])
            } catch {
                logger.debug("a Sentinel did not answer", metadata: ["sentinel": "\(s)"])
            }
        }
        if let (endpoint, n) = votes.max(by: { $0.value < $1.value }), n * 2 > sentinels.count { return endpoint }
        logger.warning("the Sentinels do not agree on the primary; asking again", metadata: ["answers": "\(votes.count)"])
        throw RedisError.unavailable
    }

    /// One command on a connection of its own (after `auth`, if given), closed after the reply
    /// (at most a second).
    static func ask(_ endpoint: Endpoint, _ args: [String], group: EventLoopGroup, auth: [String]? = nil) async throws -> RESPValue {
        let ch = try await ClientBootstrap(group: group)
            .connectTimeout(.seconds(1))
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(RESPDecoder()), MessageToByteHandler(RESPEncoder()), RedisCommandHandler(),
                    ])
                }
            }
            .connect(to: endpoint).get()
        let promise = ch.eventLoop.makePromise(of: RESPValue.self)
        let authed = ch.eventLoop.makePromise(of: RESPValue.self)
        let timeout = ch.eventLoop.scheduleTask(in: .seconds(1)) {
            promise.fail(RedisError.timeout)
            authed.fail(RedisError.timeout)
        }
        if let auth {
            ch.write((auth, authed)).whenFailure { authed.fail($0) }
        } else {
            authed.succeed(.simple("OK"))
        }
        ch.writeAndFlush(([String](args), promise)).whenFailure { promise.fail($0) }
        defer {
            timeout.cancel()
            ch.close(promise: nil)
        }
        if case let .error(message) = try await authed.futureResult.get() { throw RedisError.server(message) }
        return try await promise.futureResult.get()
    }
}

/// `+switch-master` from the Sentinels, for this primary: `onSwitch` runs (the clients drop
/// their connections and ask where the primary is now). It listens to every Sentinel at once,
/// each again after any loss: one subscription alone missed the switch in a test, when its
/// Sentinel was on the primary's host that was cut off and it came back to another after the
/// event. The same switch heard from several Sentinels is acted on once. A failover missed
/// anyway is still found when the old primary's connections break or answer `READONLY`.
public final class SentinelWatcher: Service, Sendable {
    private let subscribers: [RedisSubscriber]

    public init(locator: RedisLocator, group: EventLoopGroup, logger: Logger, onSwitch: @escaping @Sendable () -> Void) {
        let name = locator.masterName
        let last = NIOLockedValueBox<(payload: String, at: NIODeadline)?>(nil)
        subscribers = locator.sentinels.map { sentinel in
            RedisSubscriber(
                resolve: { sentinel }, what: "redis sentinel", channels: ["+switch-master"], checkRole: false,
                password: locator.sentinelPassword, user: locator.sentinelUser, place: sentinel.description, group: group, logger: logger,
                onMessage: { _, payload in
                    // "<master name> <old ip> <old port> <new ip> <new port>"
                    let parts = payload.split(separator: " ")
                    guard parts.count == 5, parts[0] == name else { return }
                    let now = NIODeadline.now()
                    let fresh = last.withLockedValue { l -> Bool in
                        if let l, l.payload == payload, now - l.at < .seconds(30) { return false }
                        l = (payload, now)
                        return true
                    }
                    guard fresh else { return }
                    logger.warning("Sentinel switched the primary; following it",
                                   metadata: ["from": "\(parts[1]):\(parts[2])", "to": "\(parts[3]):\(parts[4])", "sentinel": "\(sentinel)"])
                    locator.noteSwitch()
                    onSwitch()
                },
                onState: { _ in })
        }
    }

    /// Add it to a service group only with Sentinels (`locator.usesSentinels`).
    public func run() async throws {
        try await withThrowingDiscardingTaskGroup { group in
            for s in subscribers { group.addTask { try await s.run() } }
        }
    }
}
