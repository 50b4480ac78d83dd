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
    var refusal: HTTPResponseStatus = .unauthorized
}

/// Answers requests that did not become WebSocket streams.
final class RefusedUpgradeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let state: NIOLockedValueBox<UpgradeState>

    init(state: NIOLockedValueBox<UpgradeState>) {
        self.state = state
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case let .head(head) = unwrapInboundIn(data) else { return }
        let isUpgrade = head.headers["upgrade"].contains { $0.lowercased() == "websocket" }
        let status: HTTPResponseStatus = isUpgrade ? state.withLockedValue { $0.refusal } : .badRequest
        let error: String
        switch status {
        case .unauthorized: error = "unauthenticated"
        case .serviceUnavailable: error = "unavailable"
        default: error = "bad_request"
        }
        let body = ByteBuffer(string: "{\"ok\":false,\"error\":\"\(error)\"}")
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
    let group: EventLoopGroup
    let logger: Logger
    let drainBatch: Int

    func run() async throws {
        let ctx = self.ctx, sessions = self.sessions, workerID = ctx.workerID
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .childChannelInitializer { channel in
                let state = NIOLockedValueBox(UpgradeState())
                let refused = NIOLoopBound(RefusedUpgradeHandler(state: state), eventLoop: channel.eventLoop)
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
                                guard let user = try await sessions.validate(sid) else { return nil }
                                state.withLockedValue {
                                    $0.user = user
                                    $0.sessionHash = SessionStore.hash(sid)
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
                            try sync.addHandler(ChatConnectionHandler(ctx: ctx, info: info, sessionHash: hash))
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
        let server: Channel
        switch listen {
        case let .unix(path):
            server = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
            chmod(path, 0o600)
        case let .tcp(host, port):
            server = try await bootstrap.bind(host: host, port: port).get()
        }
        logger.info("worker listening", metadata: ["listen": "\(listen)", "worker.id": "\(workerID)"])

        try? await gracefulShutdown()
        // Drain: no new hand-offs, then move clients elsewhere in small batches (1012: reconnect at once).
        logger.info("worker draining", metadata: ["connections": "\(ctx.hub.count)"])
        _ = try? await ctx.coordinator.call(.unregister(worker: workerID))
        try? await server.close()
        let deadline = ContinuousClock.now + .seconds(10)
        while ctx.hub.count > 0 && ContinuousClock.now < deadline {
            _ = ctx.hub.closeAll(code: 1012, limit: drainBatch)
            try? await Task.sleep(for: .milliseconds(50))
        }
        logger.info("worker drained")
    }
}

/// Whether this worker may take streams: it registers with the coordinator only
/// while its Redis subscription is live, so no client lands where messages do not arrive.
final class WorkerReadiness: Sendable {
    private let state = NIOLockedValueBox((subscribed: false, registered: false))

    var subscribed: Bool { state.withLockedValue { $0.subscribed } }

    func setSubscribed(_ up: Bool) {
        state.withLockedValue { $0.subscribed = up }
    }

    /// After a (re)connection to the coordinator the registration must be sent again.
    func linkReconnected() {
        state.withLockedValue { $0.registered = false }
    }

    /// True once when a registration is due.
    func takeRegistrationDue() -> Bool {
        state.withLockedValue { s in
            guard s.subscribed && !s.registered else { return false }
            s.registered = true
            return true
        }
    }

    func registrationFailed() {
        state.withLockedValue { $0.registered = false }
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
                if readiness.takeRegistrationDue() {
                    let r = try? await ctx.coordinator.call(.register(worker: ctx.workerID, address: advertise, connections: ctx.hub.connections))
                    if r == .ok {
                        ctx.logger.info("registered with the coordinator", metadata: ["connections": "\(ctx.hub.count)"])
                    } else {
                        readiness.registrationFailed()
                    }
                    lastBeat = ContinuousClock.now
                } else if ContinuousClock.now - lastBeat >= .seconds(1) {
                    lastBeat = ContinuousClock.now
                    let r = try? await ctx.coordinator.call(.heartbeat(worker: ctx.workerID, connectionCount: ctx.hub.count))
                    if r == .unknownWorker { readiness.registrationFailed() }
                }
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }
}
