import ChatCore
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import Proto
import ServiceLifecycle

/// What the upgrade check learned about one connection.
struct UpgradeState: Sendable {
    var user: String?
    var sessionHash: String?
    var sessionEndsAtMs: Int64 = 0
    var refusal: HTTPResponseStatus = .unauthorized
}

/// Answers requests that did not become WebSocket streams, and the worker's
/// own `GET /healthz` (200 while subscribed to Redis, 503 otherwise).
final class RefusedUpgradeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let state: NIOLockedValueBox<UpgradeState>
    let health: @Sendable () -> (subscribed: Bool, coordinator: Bool, connections: Int, localRateDecisions: Int)

    init(state: NIOLockedValueBox<UpgradeState>, health: @escaping @Sendable () -> (subscribed: Bool, coordinator: Bool, connections: Int, localRateDecisions: Int)) {
        self.state = state
        self.health = health
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case let .head(head) = unwrapInboundIn(data) else { return }
        if head.method == .GET && head.uri == "/healthz" {
            let h = health()
            let body = "{\"status\":\"\(h.subscribed ? "ok" : "degraded")\",\"subscribed\":\(h.subscribed),\"coordinator\":\(h.coordinator),\"connections\":\(h.connections),\"local_rate_decisions\":\(h.localRateDecisions)}"
            respond(context, h.subscribed ? .ok : .serviceUnavailable, body)
            return
        }
        let isUpgrade = head.headers["upgrade"].contains { $0.lowercased() == "websocket" }
        let status: HTTPResponseStatus = isUpgrade ? state.withLockedValue { $0.refusal } : .badRequest
        let error: String
        switch status {
        case .unauthorized: error = "unauthenticated"
        case .serviceUnavailable: error = "unavailable"
        default: error = "bad_request"
        }
        respond(context, status, "{\"ok\":false,\"error\":\"\(error)\"}")
    }

    private func respond(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, _ json: String) {
        let body = ByteBuffer(string: json)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        headers.add(name: "Connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
    }
}

/// Serves WebSocket streams handed over by gateways; drains on graceful shutdown.
struct WorkerService: Service {
    let listen: Endpoint
    let advertise: String
    let ctx: WorkerContext
    let sessions: SessionStore
    let readiness: WorkerReadiness
    let group: EventLoopGroup
    let logger: Logger
    let drainBatch: Int

    func run() async throws {
        let ctx = self.ctx, sessions = self.sessions, workerID = ctx.workerID, readiness = self.readiness
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .childChannelInitializer { channel in
                let state = NIOLockedValueBox(UpgradeState())
                let refused = NIOLoopBound(RefusedUpgradeHandler(state: state, health: { (readiness.ready, ctx.coordinator.isConnected, ctx.hub.count, ctx.limiter.fallbackCount) }),
                                           eventLoop: channel.eventLoop)
                let upgrader = NIOWebSocketServerUpgrader(
                    maxFrameSize: ChatLimits.maxFrameBytes,
                    automaticErrorHandling: true,
                    shouldUpgrade: { channel, head in
                        guard let sid = SessionStore.sessionID(fromCookieHeaders: head.headers["cookie"]) else {
                            return channel.eventLoop.makeSucceededFuture(nil)
                        }
                        let promise = channel.eventLoop.makePromise(of: HTTPHeaders?.self)
                        promise.completeWithTask {
                            do {
                                guard let session = try await sessions.lookup(sid) else { return nil }
                                state.withLockedValue {
                                    $0.user = session.user
                                    $0.sessionHash = SessionStore.hash(sid)
                                    $0.sessionEndsAtMs = session.endsAtMs
                                }
                                return HTTPHeaders([("X-SecureChat-Worker", workerID)])
                            } catch {
                                state.withLockedValue { $0.refusal = .serviceUnavailable }
                                return nil
                            }
                        }
                        return promise.futureResult
                    },
                    upgradePipelineHandler: { channel, _ in
                        let s = state.withLockedValue { $0 }
                        guard let user = s.user, let hash = s.sessionHash else {
                            return channel.close()
                        }
                        let info = ConnectionInfo(id: "\(workerID).\(UInt64.random(in: 0...UInt64.max))", user: user)
                        return channel.eventLoop.makeCompletedFuture {
                            let sync = channel.pipeline.syncOperations
                            // Sits after the WebSocket handlers otherwise, and would see frames.
                            sync.removeHandler(refused.value, promise: nil)
                            try sync.addHandler(ChatConnectionHandler(ctx: ctx, info: info, sessionHash: hash, sessionEndsAtMs: s.sessionEndsAtMs))
                        }
                    }
                )
                return channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.configureHTTPServerPipeline(withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
                    try sync.addHandler(refused.value)
                }
            }
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator.chatStream)
        let server = try await bootstrap.bind(to: listen)
        logger.info("worker listening", metadata: ["listen": "\(listen)", "worker.id": "\(workerID)"])

        try? await gracefulShutdown()
        // Drain: no new hand-offs, then move clients elsewhere in small batches (1012: reconnect at once).
        logger.info("worker draining", metadata: ["connections": "\(ctx.hub.count)"])
        _ = try? await ctx.coordinator.call(.unregister(worker: workerID))
        try? await server.close()
        let deadline = ContinuousClock.now + .seconds(10)
        while ctx.hub.count > 0 && ContinuousClock.now < deadline {
            _ = ctx.hub.closeSome(code: 1012, limit: drainBatch)
            try? await Task.sleep(for: .milliseconds(50))
        }
        logger.info("worker drained")
    }
}

/// Whether this worker may take streams: it registers with the coordinator only
/// once its Redis subscription is live (and any gap filled), and asks to be left
/// out of routing while it is not, keeping its lease and presence meanwhile.
final class WorkerReadiness: Sendable {
    private struct State {
        var ready = false
        var registered = false
        var routable = false
    }

    enum Step: Equatable { case register, unroute, heartbeat, wait }

    private let state = NIOLockedValueBox(State())

    var ready: Bool { state.withLockedValue { $0.ready } }

    func setReady(_ up: Bool) {
        state.withLockedValue { $0.ready = up }
    }

    /// After a (re)connection to the coordinator the registration must be sent again.
    func linkReconnected() {
        state.withLockedValue {
            $0.registered = false
            $0.routable = false
        }
    }

    /// What to tell the coordinator next; assumes it succeeds (call `failed()` if not).
    func nextStep() -> Step {
        state.withLockedValue { s in
            if s.ready && (!s.registered || !s.routable) {
                s.registered = true
                s.routable = true
                return .register
            }
            if !s.ready && s.registered && s.routable {
                s.routable = false
                return .unroute
            }
            return s.registered ? .heartbeat : .wait
        }
    }

    func failed() {
        state.withLockedValue {
            $0.registered = false
            $0.routable = false
        }
    }
}

/// Keeps this worker's registration and lease with the coordinator: registers
/// (with every connection it holds) when due, then heartbeats about every second.
struct HeartbeatService: Service {
    let ctx: WorkerContext
    let advertise: String
    let readiness: WorkerReadiness

    func run() async throws {
        var lastBeat = ContinuousClock.now - .seconds(10)
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            if ctx.coordinator.isConnected {
                switch readiness.nextStep() {
                case .register:
                    let r = try? await ctx.coordinator.call(.register(worker: ctx.workerID, address: advertise, connections: ctx.hub.connections))
                    if r == .ok {
                        ctx.logger.info("registered with the coordinator", metadata: ["connections": "\(ctx.hub.count)"])
                    } else {
                        readiness.failed()
                    }
                    lastBeat = ContinuousClock.now
                case .unroute:
                    ctx.logger.warning("not ready (redis subscription down); asked to be left out of routing")
                    if (try? await ctx.coordinator.call(.unregister(worker: ctx.workerID))) != .ok { readiness.failed() }
                case .heartbeat where ContinuousClock.now - lastBeat >= .seconds(1):
                    lastBeat = ContinuousClock.now
                    let r = try? await ctx.coordinator.call(.heartbeat(worker: ctx.workerID, connectionCount: ctx.hub.count))
                    if r == .unknownWorker { readiness.failed() }
                case .heartbeat, .wait:
                    break
                }
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }
}
