import ChatCore
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Proto
import ServiceLifecycle

/// The worker's own `GET /healthz` on its link socket: 200 while ready for new streams
/// (`WorkerReadiness`: subscribed to Redis, its command connections up), 503 otherwise,
/// with each part. Anything else gets 404.
final class WorkerHealthHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    typealias Health = @Sendable () -> (ready: Bool, subscribed: Bool, store: Bool, coordinator: Bool, connections: Int,
                                        localRateDecisions: Int, coordinatorEpoch: UInt64)
    let health: Health

    init(health: @escaping Health) {
        self.health = health
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case let .head(head) = unwrapInboundIn(data) else { return }
        guard head.method == .GET && head.uri == "/healthz" else {
            respond(context, .notFound, "{\"ok\":false,\"error\":\"not_found\"}")
            return
        }
        let h = health()
        let body = "{\"status\":\"\(h.ready ? "ok" : "degraded")\",\"ready\":\(h.ready),\"subscribed\":\(h.subscribed),\"store\":\(h.store),\"coordinator\":\(h.coordinator),\"connections\":\(h.connections),\"local_rate_decisions\":\(h.localRateDecisions),\"coordinator_epoch\":\(h.coordinatorEpoch)}"
        respond(context, h.ready ? .ok : .serviceUnavailable, body)
    }

    private func respond(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, _ json: String) {
        let body = ByteBuffer(string: json)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        headers.add(name: "Connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}

/// The first bytes on the worker's socket decide what it is: `GET ` is an operator's or a
/// test's health check (HTTP/1.1), anything else must be a gateway link's handshake.
final class LinkOrHealthSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    private var seen: ByteBuffer?
    private let link: @Sendable (Channel) throws -> Void
    private let health: @Sendable (Channel) throws -> Void

    private var deadline: Scheduled<Void>?

    init(link: @escaping @Sendable (Channel) throws -> Void, health: @escaping @Sendable (Channel) throws -> Void) {
        self.link = link
        self.health = health
    }

    /// A stranger gets 5 s in all: to say what it is, and for a health check to be answered.
    /// (A link's handshake has its own 5 s from when it is recognised.)
    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: .seconds(5)) { channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var chunk = unwrapInboundIn(data)
        if seen == nil { seen = chunk } else { seen!.writeBuffer(&chunk) }
        guard let buffer = seen, buffer.readableBytes >= 4 else { return }
        let isHTTP = buffer.getString(at: buffer.readerIndex, length: 4) == "GET "
        if !isHTTP { deadline?.cancel() }
        do {
            try (isHTTP ? health : link)(context.channel)
        } catch {
            context.close(promise: nil)
            return
        }
        seen = nil
        context.fireChannelRead(wrapInboundOut(buffer))
        context.pipeline.syncOperations.removeHandler(self, promise: nil)
    }
}

/// Serves gateway links (and the health check) on the worker's socket; drains on graceful shutdown.
struct WorkerService: Service {
    let listen: Endpoint
    let ctx: WorkerContext
    let readiness: WorkerReadiness
    let group: EventLoopGroup
    let logger: Logger
    let drainBatch: Int

    func run() async throws {
        let ctx = self.ctx, workerID = ctx.workerID, readiness = self.readiness
        let health: WorkerHealthHandler.Health = {
            (readiness.ready, readiness.relaying, readiness.store, ctx.coordinator.isConnected, ctx.hub.count,
             ctx.limiter.fallbackCount, ctx.coordinator.epoch)
        }
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sniffer = LinkOrHealthSniffer(
                        link: { ch in
                            try ch.pipeline.syncOperations.addHandlers([
                                ByteToMessageHandler(LinkFrameDecoder()),
                                MessageToByteHandler(LinkFrameEncoder()),
                                WorkerLinkHandler(ctx: ctx),
                            ])
                        },
                        health: { ch in
                            try ch.pipeline.syncOperations.configureHTTPServerPipeline()
                            try ch.pipeline.syncOperations.addHandler(WorkerHealthHandler(health: health))
                        })
                    try channel.pipeline.syncOperations.addHandler(sniffer)
                }
            }
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
        let server = try await bootstrap.bind(to: listen)
        logger.info("worker listening", metadata: ["listen": "\(listen)", "worker.id": "\(workerID)"])

        try? await gracefulShutdown()
        // Drain: no new streams, then move clients elsewhere in small batches (1012: reconnect at once).
        logger.info("worker draining", metadata: ["connections": "\(ctx.hub.count)"])
        _ = try? await ctx.coordinator.call(.unregister(worker: workerID))
        ctx.hub.announceDraining()
        try? await server.close()
        let deadline = ContinuousClock.now + .seconds(10)
        while ctx.hub.count > 0 && ContinuousClock.now < deadline {
            _ = ctx.hub.closeSome(code: 1012, limit: drainBatch)
            try? await Task.sleep(for: .milliseconds(50))
        }
        logger.info("worker drained")
    }
}

/// The worker's `RoutingReadiness` under a lock, fed the Hub's relay state (read under the
/// Hub's one lock, so a subscription lost right after a gap fill can never leave the worker
/// reporting ready while unsubscribed) and its Redis command connections, on the monotonic clock.
final class WorkerReadiness: Sendable {
    typealias Step = RoutingReadiness.Step

    private let state = NIOLockedValueBox(RoutingReadiness())
    private let isRelaying: @Sendable () -> Bool
    private let storeUp: @Sendable () -> Bool

    init(isRelaying: @escaping @Sendable () -> Bool, storeUp: @escaping @Sendable () -> Bool) {
        self.isRelaying = isRelaying
        self.storeUp = storeUp
    }

    private static func nowMs() -> Int { Int(NIODeadline.now().uptimeNanoseconds / 1_000_000) }

    var relaying: Bool { isRelaying() }
    var store: Bool { storeUp() }

    // The inputs are read under this lock (the Hub's and the clients' locks are never held
    // while this one is taken), so the health check and the heartbeat loop apply in order.
    var ready: Bool {
        state.withLockedValue { $0.ready(relaying: isRelaying(), store: storeUp(), nowMs: Self.nowMs()) }
    }

    /// After a (re)connection to the coordinator the registration must be sent again.
    func linkReconnected() { state.withLockedValue { $0.failed() } }

    /// What to tell the coordinator next; assumes it succeeds (call `failed()` if not).
    func nextStep() -> Step {
        state.withLockedValue { $0.nextStep(relaying: isRelaying(), store: storeUp(), nowMs: Self.nowMs()) }
    }

    func failed() { state.withLockedValue { $0.failed() } }

    func unrouteFailed() { state.withLockedValue { $0.unrouteFailed() } }
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
                    ctx.logger.warning("not ready (a redis connection is down); asked to be left out of routing")
                    switch try? await ctx.coordinator.call(.unregister(worker: ctx.workerID)) {
                    case .ok?: break
                    case .unknownWorker?: readiness.failed()
                    default: readiness.unrouteFailed()
                    }
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
