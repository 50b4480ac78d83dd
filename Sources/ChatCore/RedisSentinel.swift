import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle

/// Where the Redis primary is: one fixed address (`--redis-url`), or whatever the Sentinels
/// (`--redis-sentinels`) say the primary of `--redis-master-name` is, asked afresh on
/// every connection. All the Sentinels are asked at once, each for at most a second.
public struct RedisLocator: Sendable {
    public let fixed: Endpoint
    public let sentinels: [Endpoint]
    public let masterName: String
    /// `AUTH` for the Sentinels themselves (their `requirepass`, or an ACL user of theirs).
    public let sentinelPassword: String?
    public let sentinelUser: String?
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

    /// The primary's address now: the one a majority of the Sentinels name (a Sentinel that
    /// was cut off may still name a primary the others replaced; following it would split the
    /// writes). All are asked at once, and the first majority is the answer: a Sentinel that
    /// does not answer (its host cut off) costs nothing once the others agree. Asked one after
    /// another, it cost its 1 s connect timeout on every connection made during a failover.
    /// No majority among the answers: unavailable, and the caller tries again.
    public func primary(group: EventLoopGroup, logger: Logger) async throws -> Endpoint {
        guard usesSentinels else { return fixed }
        let name = masterName
        let auth = sentinelPassword.map { RedisClient.authCommand(user: sentinelUser, password: $0) }
        var tally = SentinelTally(sentinels: sentinels.count)
        let winner: Endpoint? = await withTaskGroup(of: (Endpoint, Result<RESPValue, Error>).self) { tasks in
            for s in sentinels {
                tasks.addTask {
                    do {
                        return (s, .success(try await Self.ask(s, ["SENTINEL", "get-master-addr-by-name", name], group: group, auth: auth)))
                    } catch {
                        return (s, .failure(error))
                    }
                }
            }
            while let (s, result) = await tasks.next() {
                var named: Endpoint?
                switch result {
                case let .success(reply):
                    if let parts = reply.array, parts.count == 2, let host = parts[0].string, let port = parts[1].string.flatMap(Int.init) {
                        named = .tcp(host: host, port: port)
                    } else {
                        logger.warning("a Sentinel does not know the primary", metadata: ["sentinel": "\(s)", "master": "\(name)"])
                    }
                case let .failure(error as RedisError) where error.isAuthFailure:
                    logger.error("a Sentinel refused the password (--redis-sentinel-password)", metadata: ["sentinel": "\(s)"])
                case .failure:
                    logger.debug("a Sentinel did not answer", metadata: ["sentinel": "\(s)"])
                }
                if let decided = tally.add(named) {
                    tasks.cancelAll()
                    return decided
                }
                // No majority possible whatever the rest say (two of three without an answer):
                // the slow ones are not waited for.
                if tally.undecidable {
                    tasks.cancelAll()
                    return nil
                }
            }
            return nil
        }
        if let winner { return winner }
        logger.warning("the Sentinels do not agree on the primary; asking again", metadata: ["answers": "\(tally.distinctAnswers)"])
        throw RedisError.unavailable
    }

    /// One command on a connection of its own (after `auth`, if given), closed after the reply:
    /// at most a second to connect and a second for the reply. Cancelling the task answers at
    /// once and closes the connection when it comes up.
    static func ask(_ endpoint: Endpoint, _ args: [String], group: EventLoopGroup, auth: [String]? = nil) async throws -> RESPValue {
        let loop = group.next()
        let result = loop.makePromise(of: RESPValue.self)
        let connecting = ClientBootstrap(group: loop)
            .connectTimeout(.seconds(1))
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(RESPDecoder()), MessageToByteHandler(RESPEncoder()), RedisCommandHandler(),
                    ])
                }
            }
            .connect(to: endpoint)
        connecting.whenFailure { result.fail($0) }
        connecting.whenSuccess { ch in
            let reply = ch.eventLoop.makePromise(of: RESPValue.self)
            let authed = ch.eventLoop.makePromise(of: RESPValue.self)
            let timeout = ch.eventLoop.scheduleTask(in: .seconds(1)) {
                reply.fail(RedisError.timeout)
                authed.fail(RedisError.timeout)
            }
            if let auth {
                ch.write((auth, authed)).whenFailure { authed.fail($0) }
            } else {
                authed.succeed(.simple("OK"))
            }
            ch.writeAndFlush(([String](args), reply)).whenFailure { reply.fail($0) }
            authed.futureResult.flatMap { answer -> EventLoopFuture<RESPValue> in
                if case let .error(message) = answer { return ch.eventLoop.makeFailedFuture(RedisError.server(message)) }
                return reply.futureResult
            }.whenComplete { outcome in
                timeout.cancel()
                result.completeWith(outcome)
            }
            // Answered, failed or given up by the caller: the connection goes.
            result.futureResult.whenComplete { _ in ch.close(promise: nil) }
        }
        return try await withTaskCancellationHandler {
            try await result.futureResult.get()
        } onCancel: {
            result.fail(CancellationError())
        }
    }
}

/// Votes of the Sentinels for where the primary is, as they come in: the first address a
/// majority of all of them names wins. A Sentinel without an answer (unreachable, or it does
/// not know the primary) counts as a vote for nothing.
public struct SentinelTally: Sendable {
    public let sentinels: Int
    private var votes: [Endpoint: Int] = [:]
    private var decided = false
    private var answered = 0

    public init(sentinels: Int) { self.sentinels = sentinels }

    /// How many different addresses were named so far.
    public var distinctAnswers: Int { votes.count }

    /// No address can reach a majority any more, whatever the Sentinels yet to answer say.
    public var undecidable: Bool { !decided && (votes.values.max() ?? 0) + (sentinels - answered) <= sentinels / 2 }

    /// One Sentinel's answer (nil: none); the winner, once and only once there is one.
    public mutating func add(_ named: Endpoint?) -> Endpoint? {
        answered += 1
        guard !decided, let named else { return nil }
        votes[named, default: 0] += 1
        guard let n = votes[named], n * 2 > sentinels else { return nil }
        decided = true
        return named
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
