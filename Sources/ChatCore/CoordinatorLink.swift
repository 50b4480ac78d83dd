import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Proto
import ServiceLifecycle

/// Why a coordinator call failed. Callers fall back (local rate limiter, cached routes).
public struct CoordinatorUnavailable: Error, CustomStringConvertible {
    public var reason: String?
    public var description: String { "coordinator unavailable" + (reason.map { ": " + $0 } ?? "") }
    public init(_ reason: String? = nil) { self.reason = reason }
}

/// Client side of a coordinator link: pipelined requests matched by id, pushed events to a callback.
final class CoordinatorClientHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = (CoordinatorRequest, EventLoopPromise<CoordinatorResponse>)
    typealias OutboundOut = ByteBuffer

    private var nextID: UInt64 = 1
    private var pending: [UInt64: (promise: EventLoopPromise<CoordinatorResponse>, timeout: Scheduled<Void>)] = [:]
    private let onEvent: @Sendable (CoordinatorFrame) -> Void
    private let timeout: TimeAmount

    init(timeout: TimeAmount, onEvent: @escaping @Sendable (CoordinatorFrame) -> Void) {
        self.timeout = timeout
        self.onEvent = onEvent
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let (request, reply) = unwrapOutboundIn(data)
        let isHello = request == .hello
        let id = nextID
        nextID += 1
        do {
            let buffer = try CoordinatorCodec.encode(.request(id: id, request), allocator: context.channel.allocator)
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            let channel = context.channel
            let timer = context.eventLoop.scheduleTask(in: timeout) {
                loopBound.value.pending.removeValue(forKey: id)?.promise.fail(CoordinatorUnavailable())
                // A coordinator that does not answer `hello` in time is treated as gone (cut off,
                // paused): the link closes and the next coordinator is tried. A slow answer to
                // anything else only fails that call.
                if isHello { channel.close(promise: nil) }
            }
            pending[id] = (reply, timer)
            context.write(wrapOutboundOut(buffer), promise: promise)
        } catch {
            reply.fail(error)
            promise?.fail(error)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let frame = try? CoordinatorCodec.decode(unwrapInboundIn(data)) else {
            context.close(promise: nil)
            return
        }
        switch frame {
        case let .response(id, response):
            if let p = pending.removeValue(forKey: id) {
                p.timeout.cancel()
                p.promise.succeed(response)
            }
        case .presence, .presenceSnapshot:
            onEvent(frame)
        case .request:
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let all = pending
        pending = [:]
        for p in all.values {
            p.timeout.cancel()
            p.promise.fail(CoordinatorUnavailable())
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// A link to the coordinator that reconnects with backoff for as long as it runs.
/// `onConnect` runs after each (re)connection (workers mark their registration as due there).
///
/// Given several coordinators (`--coordinator a,b`), it keeps to the one that says it is
/// active, under an epoch no older than the newest seen (`CoordinatorChoice`), and moves on
/// after any failure. Every half second it asks `hello` again: a link that goes unanswered
/// for the request timeout, or whose coordinator is no longer active, is closed.
public final class CoordinatorLink: Service, Sendable {
    public let endpoints: [Endpoint]
    public var endpoint: Endpoint { endpoints[0] }
    private let group: EventLoopGroup
    private let logger: Logger
    private let secret: String?
    private let timeout: TimeAmount
    private let channel = NIOLockedValueBox<Channel?>(nil)
    private let choice: NIOLockedValueBox<CoordinatorChoice>
    /// The link that passed `hello` and the fencing rule: other requests go only on it.
    private let accepted = NIOLockedValueBox<ObjectIdentifier?>(nil)
    /// The last refusal logged: the same one again (every half second) is not repeated.
    private let lastRefusal = NIOLockedValueBox<String?>(nil)
    private let onEvent: @Sendable (CoordinatorFrame) -> Void
    private let onConnect: @Sendable (CoordinatorLink) async -> Void
    static let keepalive = TimeAmount.milliseconds(500)

    public init(endpoints: [Endpoint], secret: String?, group: EventLoopGroup, logger: Logger,
                timeout: TimeAmount = .seconds(2),
                onEvent: @escaping @Sendable (CoordinatorFrame) -> Void = { _ in },
                onConnect: @escaping @Sendable (CoordinatorLink) async -> Void = { _ in }) {
        self.endpoints = endpoints
        self.choice = NIOLockedValueBox(CoordinatorChoice(endpoints: endpoints))
        self.secret = secret
        self.group = group
        self.logger = logger
        self.timeout = timeout
        self.onEvent = onEvent
        self.onConnect = onConnect
    }

    public var isConnected: Bool { channel.withLockedValue { $0 } != nil }

    /// The newest coordinator epoch this link has accepted (0 without an election).
    public var epoch: UInt64 { choice.withLockedValue { $0.newestEpoch } }

    public func run() async throws {
        let group = self.group, timeout = self.timeout, onEvent = self.onEvent
        let secret = self.secret, logger = self.logger, onConnect = self.onConnect, choice = self.choice
        let place = endpoints.map(\.description).joined(separator: ",")
        await Reconnector(what: "coordinator", place: place, logger: logger, base: 0.05, cap: 0.5, current: channel).run(
            connect: {
                let target = choice.withLockedValue { $0.current }
                // A second is plenty on a LAN, and a host that is cut off costs no more than that
                // before the next coordinator is tried.
                return try await RedisClient.connect(endpoint: target, group: group, timeout: .seconds(1)) { ch in
                    try ch.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(LengthPrefixedDecoder()),
                        CoordinatorClientHandler(timeout: timeout, onEvent: onEvent),
                    ])
                }
            },
            established: { ch in
                if let secret {
                    // Mutual challenge-response: each side proves the secret over both nonces.
                    let auth = LinkAuth(secret: secret)
                    let mine = try LinkAuth.nonce()
                    guard case let .authChallenge(theirs, proof) = try await self.call(.authBegin(nonce: mine)),
                          theirs.count == LinkFrame.nonceBytes,
                          auth.verify(proof, expected: auth.coordinatorProof(clientNonce: mine, coordinatorNonce: theirs)) else {
                        logger.error("coordinator did not prove the cluster secret; closing the link")
                        throw CoordinatorUnavailable()
                    }
                    guard case .ok = try await self.call(.authFinish(proof: auth.coordinatorClientProof(clientNonce: mine, coordinatorNonce: theirs))) else {
                        logger.error("coordinator refused the cluster secret")
                        throw CoordinatorUnavailable()
                    }
                }
                let answer = try await self.call(.hello)
                guard self.judge(answer, link: ch) else {
                    throw CoordinatorUnavailable(answer == .standby ? "a standby (tried the next)" : "refused: not active or fenced")
                }
                self.keepAsking(ch)
                await onConnect(self)
            },
            ended: {
                choice.withLockedValue { $0.moveOn() }
                // An identifier may be reused by the next channel: nothing is accepted until judged.
                self.accepted.withLockedValue { $0 = nil }
            })
    }

    /// Applies the fencing rule to a `hello` answer; false (and logged) when the link must go.
    private func judge(_ answer: CoordinatorResponse, link: Channel) -> Bool {
        let epoch: UInt64?
        if case let .leader(e) = answer { epoch = e } else { epoch = nil }
        let now = Double(NIODeadline.now().uptimeNanoseconds) / 1e9
        let (verdict, endpoint) = choice.withLockedValue { ($0.judge(epoch: epoch, now: now), $0.current) }
        let refusal: String?
        switch verdict {
        case .accept, .acceptOlder, .notActive: refusal = nil
        default: refusal = "\(verdict) \(endpoint)"
        }
        let repeated = lastRefusal.withLockedValue { last -> Bool in
            defer { if refusal != nil || verdict == .accept { last = refusal } }
            return refusal != nil && last == refusal
        }
        if repeated { return false }
        switch verdict {
        case .accept:
            accepted.withLockedValue { $0 = ObjectIdentifier(link) }
            return true
        case let .acceptOlder(e, newest):
            logger.error("only coordinators under an older epoch answer, for 10 s now; taking one (did Redis lose its data?)",
                         metadata: ["coordinator": "\(endpoint)", "epoch": "\(e)", "newest_epoch": "\(newest)"])
            accepted.withLockedValue { $0 = ObjectIdentifier(link) }
            return true
        case .unelected:
            logger.error("coordinator runs without an election (--leader-lease-ms) but several were given; refused",
                         metadata: ["coordinator": "\(endpoint)"])
            return false
        case .notActive:
            logger.debug("coordinator is not the active one; trying the next", metadata: ["coordinator": "\(endpoint)"])
            return false
        case let .stale(e, newest):
            logger.warning("coordinator answers under an older epoch than one already seen; refused (fenced)",
                           metadata: ["coordinator": "\(endpoint)", "epoch": "\(e)", "newest_epoch": "\(newest)"])
            return false
        }
    }

    /// Every half second, `hello` on `link`: unanswered in time (the handler closes the link),
    /// or not active (closed here), and the next coordinator is tried.
    private func keepAsking(_ link: Channel) {
        let task = link.eventLoop.scheduleRepeatedTask(initialDelay: Self.keepalive, delay: Self.keepalive) { _ in
            self.callFuture(.hello).whenSuccess { answer in
                if !self.judge(answer, link: link) { link.close(promise: nil) }
            }
        }
        link.closeFuture.whenComplete { _ in task.cancel() }
    }

    /// Sends one request; throws `CoordinatorUnavailable` when there is no link or no answer in time.
    public func call(_ request: CoordinatorRequest) async throws -> CoordinatorResponse {
        try await callFuture(request).get()
    }

    /// The same as a future, completed on the link's event loop (for callers that stay on it).
    public func callFuture(_ request: CoordinatorRequest) -> EventLoopFuture<CoordinatorResponse> {
        guard let ch = channel.withLockedValue({ $0 }) else { return group.any().makeFailedFuture(CoordinatorUnavailable()) }
        switch request {
        case .authBegin, .authFinish, .hello:
            break
        default:
            // Not before the coordinator has passed `hello` and the fencing rule on this link.
            guard accepted.withLockedValue({ $0 }) == ObjectIdentifier(ch) else {
                return group.any().makeFailedFuture(CoordinatorUnavailable("not yet accepted"))
            }
        }
        let promise = ch.eventLoop.makePromise(of: CoordinatorResponse.self)
        let started = NIODeadline.now()
        promise.futureResult.whenSuccess { _ in
            Telemetry.coordinatorRoundTrip.recordNanoseconds((NIODeadline.now() - started).nanoseconds)
        }
        ch.writeAndFlush((request, promise)).whenFailure { _ in promise.fail(CoordinatorUnavailable()) }
        return promise.futureResult
    }

    /// The event loop of the current link, if connected.
    public var eventLoop: EventLoop? { channel.withLockedValue { $0?.eventLoop } }
}
