import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Proto
import ServiceLifecycle

/// Why a coordinator call failed. Callers fall back (local rate limiter, cached routes).
public struct CoordinatorUnavailable: Error, CustomStringConvertible {
    public var description: String { "coordinator unavailable" }
    public init() {}
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
        let id = nextID
        nextID += 1
        do {
            let buffer = try CoordinatorCodec.encode(.request(id: id, request), allocator: context.channel.allocator)
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            let timer = context.eventLoop.scheduleTask(in: timeout) {
                loopBound.value.pending.removeValue(forKey: id)?.promise.fail(CoordinatorUnavailable())
                return ()
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
public final class CoordinatorLink: Service, Sendable {
    public let endpoint: Endpoint
    private let group: EventLoopGroup
    private let logger: Logger
    private let secret: String?
    private let timeout: TimeAmount
    private let channel = NIOLockedValueBox<Channel?>(nil)
    private let onEvent: @Sendable (CoordinatorFrame) -> Void
    private let onConnect: @Sendable (CoordinatorLink) async -> Void

    public init(endpoint: Endpoint, secret: String?, group: EventLoopGroup, logger: Logger,
                timeout: TimeAmount = .seconds(2),
                onEvent: @escaping @Sendable (CoordinatorFrame) -> Void = { _ in },
                onConnect: @escaping @Sendable (CoordinatorLink) async -> Void = { _ in }) {
        self.endpoint = endpoint
        self.secret = secret
        self.group = group
        self.logger = logger
        self.timeout = timeout
        self.onEvent = onEvent
        self.onConnect = onConnect
    }

    public var isConnected: Bool { channel.withLockedValue { $0 } != nil }

    public func run() async throws {
        let endpoint = self.endpoint, group = self.group, timeout = self.timeout, onEvent = self.onEvent
        let secret = self.secret, logger = self.logger, onConnect = self.onConnect
        await Reconnector(what: "coordinator", endpoint: endpoint, logger: logger, base: 0.05, cap: 0.5, current: channel).run(
            connect: {
                try await RedisClient.connect(endpoint: endpoint, group: group) { ch in
                    try ch.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(LengthPrefixedDecoder()),
                        CoordinatorClientHandler(timeout: timeout, onEvent: onEvent),
                    ])
                }
            },
            established: { _ in
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
                await onConnect(self)
            })
    }

    /// Sends one request; throws `CoordinatorUnavailable` when there is no link or no answer in time.
    public func call(_ request: CoordinatorRequest) async throws -> CoordinatorResponse {
        try await callFuture(request).get()
    }

    /// The same as a future, completed on the link's event loop (for callers that stay on it).
    public func callFuture(_ request: CoordinatorRequest) -> EventLoopFuture<CoordinatorResponse> {
        guard let ch = channel.withLockedValue({ $0 }) else { return group.any().makeFailedFuture(CoordinatorUnavailable()) }
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
