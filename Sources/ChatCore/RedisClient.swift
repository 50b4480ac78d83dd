import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle

/// Errors from the Redis client. `unavailable` means no connection right now:
/// callers answer with a temporary error (HTTP 503, `error` code `unavailable`).
public struct RedisError: Error, CustomStringConvertible, Equatable {
    private enum Code: Equatable { case unavailable, timeout, server(String), unexpected, notReplicated }
    private let code: Code
    public static let unavailable = RedisError(code: .unavailable)
    public static let timeout = RedisError(code: .timeout)
    public static let unexpectedReply = RedisError(code: .unexpected)
    /// Stored on the primary, but no replica confirmed it in time (`WAIT`): not acknowledged.
    public static let notReplicated = RedisError(code: .notReplicated)
    public static func server(_ message: String) -> RedisError { RedisError(code: .server(message)) }

    public var isNoScript: Bool {
        if case let .server(m) = code { return m.hasPrefix("NOSCRIPT") }
        return false
    }

    /// A failure that waiting can mend: no connection, no reply in time, no replica confirmed
    /// yet, or a server that is demoted (`READONLY`), loading its data after a restart
    /// (`LOADING`) or cut off from its primary (`MASTERDOWN`).
    public var isTransient: Bool {
        switch code {
        case .unavailable, .timeout, .notReplicated: return true
        case let .server(m): return m.hasPrefix("READONLY") || m.hasPrefix("LOADING") || m.hasPrefix("MASTERDOWN")
        case .unexpected: return false
        }
    }

    /// A refused `AUTH` (wrong password or user), or a command refused for want of one.
    public var isAuthFailure: Bool {
        if case let .server(m) = code { return m.hasPrefix("WRONGPASS") || m.hasPrefix("NOAUTH") || m.hasPrefix("ERR invalid password") }
        return false
    }

    public var description: String {
        switch code {
        case .unavailable: return "redis unavailable"
        case .timeout: return "redis timeout"
        case let .server(m): return "redis error: \(m)"
        case .unexpected: return "unexpected redis reply"
        case .notReplicated: return "redis: no replica confirmed the write in time"
        }
    }
}

/// Matches replies to commands in order (RESP is strictly ordered on one connection).
final class RedisCommandHandler: ChannelDuplexHandler {
    typealias InboundIn = RESPValue
    typealias OutboundIn = ([String], EventLoopPromise<RESPValue>)
    typealias OutboundOut = [String]

    private var pending = CircularBuffer<EventLoopPromise<RESPValue>>()

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let (args, reply) = unwrapOutboundIn(data)
        pending.append(reply)
        context.write(wrapOutboundOut(args), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let value = unwrapInboundIn(data)
        guard let promise = pending.popFirst() else {
            context.close(promise: nil)
            return
        }
        promise.succeed(value)
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        failAll()
        context.close(promise: nil)
    }

    private func failAll() {
        while let p = pending.popFirst() { p.fail(RedisError.unavailable) }
    }
}

/// One pipelined connection to Redis that reconnects with backoff for as long

/// TLS to Redis (`rediss://` URLs, or `--redis-tls-ca`): the server's certificate is checked
/// against the given CA (else the system's roots) and its name against the URL's host.
public struct RedisTLS: Sendable {
    public let context: NIOSSLContext
    public let serverHostname: String?

    /// From `--redis-url` and `--redis-tls-ca`; nil when Redis is reached without TLS.
    public static func from(options: Options) throws -> RedisTLS? {
        let url = options.string("redis-url") ?? ""
        let ca = options.string("redis-tls-ca")
        guard url.hasPrefix("rediss://") || ca != nil else { return nil }
        var config = TLSConfiguration.makeClientConfiguration()
        config.minimumTLSVersion = .tlsv12
        if let ca { config.trustRoots = .file(ca) }
        let endpoint = try Endpoint(parsing: url)
        guard case let .tcp(host, _) = endpoint else { throw Options.Invalid("TLS to Redis needs a host:port --redis-url") }
        // A name for SNI and the check; an address is checked against the certificate's IP entries.
        let isAddress = host.allSatisfy { $0.isNumber || $0 == "." } || host.contains(":")
        return RedisTLS(context: try NIOSSLContext(configuration: config), serverHostname: isAddress ? nil : host)
    }

    /// The handler that goes first in a Redis connection's pipeline.
    public func handler() throws -> NIOSSLClientHandler {
        try NIOSSLClientHandler(context: context, serverHostname: serverHostname)
    }
}

/// as it runs. Commands fail fast with `RedisError.unavailable` while it is down. With
/// Sentinels (`locator`) each connection goes to the primary they name and checks `ROLE`
/// first; a `READONLY` reply (the node was demoted) drops the connection to look again.
public final class RedisClient: Service, Sendable {
    public let endpoint: Endpoint
    public let locator: RedisLocator
    private let group: EventLoopGroup
    private let logger: Logger
    private let commandTimeout: TimeAmount
    private let password: String?
    /// The ACL user to `AUTH` as (`--redis-user`); nil: the default user.
    private let user: String?
    private let tls: RedisTLS?
    private let channel = NIOLockedValueBox<Channel?>(nil)
    /// True once a connection has passed AUTH and, with Sentinels, its `ROLE` check; false
    /// again when it closes.
    private let established = NIOLockedValueBox(false)

    public init(endpoint: Endpoint, password: String? = nil, user: String? = nil, tls: RedisTLS? = nil, group: EventLoopGroup, logger: Logger,
                commandTimeout: TimeAmount = .seconds(5), locator: RedisLocator? = nil) {
        self.locator = locator ?? RedisLocator(fixed: endpoint)
        self.user = user
        self.tls = tls
        self.endpoint = endpoint
        self.password = password
        self.group = group
        self.logger = logger
        self.commandTimeout = commandTimeout
    }

    public var isConnected: Bool { channel.withLockedValue { $0 } != nil }

    /// Connected and past the handshake (AUTH, `ROLE`): commands can be served.
    public var isEstablished: Bool { established.withLockedValue { $0 } && isConnected }

    static func connect(endpoint: Endpoint, group: EventLoopGroup, timeout: TimeAmount = .seconds(2),
                        handlers: @escaping @Sendable (Channel) throws -> Void) async throws -> Channel {
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture { try handlers(ch) }
            }
        return try await bootstrap.connect(to: endpoint).get()
    }

    public func run() async throws {
        let endpoint = self.endpoint, group = self.group, password = self.password, user = self.user, tls = self.tls
        let locator = self.locator, logger = self.logger, established = self.established
        let switchesBefore = NIOLockedValueBox(0)
        // With Sentinels the fixed endpoint is unused: name what it follows instead.
        let place = locator.usesSentinels ? "the primary the Sentinels name" : endpoint.description
        await Reconnector(what: "redis", place: place, logger: logger, base: 0.05, cap: 2, current: channel).run(
            connect: {
                switchesBefore.withLockedValue { $0 = locator.switchCount }
                let target = try await locator.primary(group: group, logger: logger)
                return try await Self.connect(endpoint: target, group: group) { ch in
                    if let tls { try ch.pipeline.syncOperations.addHandler(try tls.handler()) }
                    try ch.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(RESPDecoder()),
                        MessageToByteHandler(RESPEncoder()),
                        RedisCommandHandler(),
                    ])
                }
            },
            established: { [logger] _ in
                if let password {
                    do { try await self.send(RedisClient.authCommand(user: user, password: password)) } catch {
                        logger.error("redis refused the password", metadata: ["redis": "\(endpoint)"])
                        throw error
                    }
                }
                if locator.usesSentinels {
                    // Sentinels may name a node that is no longer (or not yet) the primary.
                    let role = try await self.send(["ROLE"])
                    guard role.array?.first?.string == "master" else {
                        logger.warning("the node Sentinel named is not the primary; asking again")
                        throw RedisError.unavailable
                    }
                    // A +switch-master heard while this connection was made: it may be to the
                    // old primary. From here on, `reconnect()` finds the channel and closes it.
                    guard locator.switchCount == switchesBefore.withLockedValue({ $0 }) else {
                        logger.warning("Sentinel switched the primary while connecting; asking again")
                        throw RedisError.unavailable
                    }
                }
                established.withLockedValue { $0 = true }
            },
            ended: { established.withLockedValue { $0 = false } })
    }

    /// Drops the connection (the next one asks the Sentinels again): after `+switch-master`.
    public func reconnect() {
        channel.withLockedValue { $0 }?.close(promise: nil)
    }

    private func close() {
        channel.withLockedValue { $0 }?.close(promise: nil)
    }

    /// Sends one command and returns its reply; a Redis error reply is thrown as `RedisError.server`.
    @discardableResult
    public func send(_ args: [String]) async throws -> RESPValue {
        let value = try await sendFuture(args).get()
        if case let .error(message) = value { throw RedisError.server(message) }
        return value
    }

    /// `AUTH [user] password`.
    public static func authCommand(user: String?, password: String) -> [String] {
        user.map { ["AUTH", $0, password] } ?? ["AUTH", password]
    }

    /// The connection now, to pin a sequence of commands to it (`pinned:`): one that has
    /// closed since fails them with `unavailable` rather than send them on its successor.
    public func currentChannel() -> Channel? { channel.withLockedValue { $0 } }

    public func sendFuture(_ args: [String], pinned: Channel? = nil) -> EventLoopFuture<RESPValue> {
        guard let ch = channel.withLockedValue({ $0 }), pinned == nil || pinned === ch else {
            return group.any().makeFailedFuture(RedisError.unavailable)
        }
        let promise = ch.eventLoop.makePromise(of: RESPValue.self)
        let timeout = ch.eventLoop.scheduleTask(in: commandTimeout) {
            // A reply that never comes leaves the connection out of step: start afresh.
            promise.fail(RedisError.timeout)
            ch.close(promise: nil)
        }
        let started = NIODeadline.now()
        promise.futureResult.whenComplete { result in
            timeout.cancel()
            Telemetry.redisRoundTrip.recordNanoseconds((NIODeadline.now() - started).nanoseconds)
            // A demoted primary refuses writes: find the new one.
            if case let .success(.error(message)) = result, message.hasPrefix("READONLY") { ch.close(promise: nil) }
        }
        ch.writeAndFlush((args, promise)).whenFailure { _ in promise.fail(RedisError.unavailable) }
        return promise.futureResult
    }

    /// `sendFuture` with error replies failed as `RedisError.server`, completed on `eventLoop`.
    public func sendChecked(_ args: [String], on eventLoop: EventLoop, pinned: Channel? = nil) -> EventLoopFuture<RESPValue> {
        sendFuture(args, pinned: pinned).hop(to: eventLoop).flatMapThrowing { value in
            if case let .error(message) = value { throw RedisError.server(message) }
            return value
        }
    }

    /// `evalScript` as a future completed on `eventLoop`.
    public func evalScriptFuture(_ script: RedisScript, keys: [String], args: [String], on eventLoop: EventLoop,
                                 pinned: Channel? = nil) -> EventLoopFuture<RESPValue> {
        let tail = [String(keys.count)] + keys + args
        return sendChecked(["EVALSHA", script.sha1] + tail, on: eventLoop, pinned: pinned).flatMapError { error in
            guard let e = error as? RedisError, e.isNoScript else { return eventLoop.makeFailedFuture(error) }
            return self.sendChecked(["EVAL", script.source] + tail, on: eventLoop, pinned: pinned)
        }
    }

    /// Runs a Lua script by SHA, loading it on NOSCRIPT (after a Redis restart).
    public func evalScript(_ script: RedisScript, keys: [String], args: [String]) async throws -> RESPValue {
        let tail = [String(keys.count)] + keys + args
        do {
            return try await send(["EVALSHA", script.sha1] + tail)
        } catch let error as RedisError where error.isNoScript {
            return try await send(["EVAL", script.source] + tail)
        }
    }
}

/// A Lua script and its SHA-1, for EVALSHA.
public struct RedisScript: Sendable {
    public let source: String
    public let sha1: String
    public init(_ source: String) {
        self.source = source
        self.sha1 = Crypto.sha1Hex(source)
    }
}
