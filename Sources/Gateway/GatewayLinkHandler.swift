import ChatCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Proto

/// The gateway's end of one link to a worker: the handshake, then every client stream
/// of this event loop that the worker serves. Frames from the worker are handed to the
/// streams they name; a `deliver` reaches all of its streams from one read, and each
/// stream's socket is flushed once per read burst.
final class GatewayLinkHandler: ChannelInboundHandler {
    typealias InboundIn = LinkFrame
    typealias OutboundOut = LinkFrame

    private enum State {
        case connecting(nonce: [UInt8])
        case ready
        case closed
    }

    let workerID: String
    private let gatewayID: String
    private let auth: LinkAuth
    private let logger: Logger
    /// Called once the link is gone: `true` when it went silent (a cut network), so new streams
    /// avoid the worker for a while; a clean close or a refused connection does not.
    private let onClose: @Sendable (Bool) -> Void
    private var wentSilent = false
    private let flusher: FlushCoalescer
    let ready: EventLoopPromise<Void>
    private var state: State
    private var context: ChannelHandlerContext?
    private var streams: [UInt32: GatewayStreamHandler] = [:]
    private var nextStream: UInt32 = 1
    private var touched: [GatewayStreamHandler] = []
    private var needsFlush = false
    /// The worker said it drains: no new streams go here.
    private(set) var draining = false
    private var lastInbound = NIODeadline.now()
    private var pingTask: RepeatedTask?
    private var pingCount: UInt64 = 0
    /// A ping every fifth of `deadAfter`; a worker silent for `deadAfter` is gone (a cut network
    /// link closes nothing by itself) and its streams get 1012 (`--worker-link-timeout-ms`).
    private let pingInterval: TimeAmount
    private let deadAfter: TimeAmount

    init(workerID: String, gatewayID: String, auth: LinkAuth, logger: Logger, ready: EventLoopPromise<Void>,
         flusher: FlushCoalescer, deadAfter: TimeAmount, onClose: @escaping @Sendable (Bool) -> Void) throws {
        self.deadAfter = deadAfter
        self.pingInterval = max(.milliseconds(100), .nanoseconds(deadAfter.nanoseconds / 5))
        self.workerID = workerID
        self.flusher = flusher
        self.gatewayID = gatewayID
        self.auth = auth
        self.ready = ready
        self.onClose = onClose
        var logger = logger
        logger[metadataKey: "worker.id"] = "\(workerID)"
        self.logger = logger
        state = .connecting(nonce: try LinkAuth.nonce())
    }

    var isUsable: Bool {
        if case .ready = state { return !draining }
        return false
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { sendHello(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        sendHello(context)
        context.fireChannelActive()
    }

    private func sendHello(_ context: ChannelHandlerContext) {
        guard case let .connecting(nonce) = state else { return }
        context.writeAndFlush(wrapOutboundOut(.hello(version: LinkFrame.version, gateway: gatewayID, nonce: nonce)), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let wasReady: Bool
        if case .ready = state { wasReady = true } else { wasReady = false }
        state = .closed
        pingTask?.cancel()
        ready.fail(LinkDown())
        onClose(wentSilent)
        let all = streams
        streams = [:]
        if wasReady { logger.warning("worker link lost; closing its streams", metadata: ["streams": "\(all.count)"]) }
        // The worker is gone: its clients reconnect (1012) and `sync` from their last id.
        for s in all.values { s.linkClosed(code: 1012) }
        self.context = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.warning("worker link error; closing", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        lastInbound = .now()
        switch state {
        case let .connecting(nonce):
            guard case let .challenge(version, worker, workerNonce, proof) = frame, version == LinkFrame.version,
                  worker == workerID, workerNonce.count == LinkFrame.nonceBytes,
                  auth.verify(proof, expected: auth.workerProof(gateway: gatewayID, worker: workerID, gatewayNonce: nonce, workerNonce: workerNonce)) else {
                logger.error("worker link refused: the worker did not prove the cluster secret (or is not the worker routed to)")
                context.close(promise: nil)
                return
            }
            context.writeAndFlush(wrapOutboundOut(.proof(auth.gatewayProof(gateway: gatewayID, worker: workerID,
                                                                           gatewayNonce: nonce, workerNonce: workerNonce))), promise: nil)
            state = .ready
            Telemetry.workerLinksOpened.increment()
            logger.debug("worker link up")
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            pingTask = context.eventLoop.scheduleRepeatedTask(initialDelay: pingInterval, delay: pingInterval) { _ in
                bound.value.keepalive()
            }
            ready.succeed(())
        case .ready:
            workerFrame(frame, context: context)
        case .closed:
            break
        }
    }

    private func workerFrame(_ frame: LinkFrame, context: ChannelHandlerContext) {
        switch frame {
        case let .send(id, payload):
            if let s = streams[id] { s.sendFramed(WebSocketWire.text(payload)); touched.append(s) }
        case let .deliver(payload, ids):
            // Framed once; every client's write shares the bytes.
            let framed = WebSocketWire.text(payload)
            for id in ids {
                if let s = streams[id] { s.sendFramed(framed); touched.append(s) }
            }
        case let .close(id, code):
            if let s = streams.removeValue(forKey: id) { s.linkClosed(code: code) }
        case let .flow(id, read):
            streams[id]?.setInputEnabled(read)
        case let .askRoom(id):
            streams[id]?.askRoom()
        case .draining:
            draining = true
            logger.info("worker draining")
        case let .ping(v):
            write(.pong(v))
        case .pong:
            break
        case .hello, .challenge, .proof, .open, .clientText, .clientClosed, .room:
            logger.warning("unexpected frame on a worker link; closing")
            context.close(promise: nil)
        }
    }

    private func keepalive() {
        guard let context else { return }
        if NIODeadline.now() - lastInbound > deadAfter {
            logger.warning("worker link silent; closing it")
            wentSilent = true
            context.close(promise: nil)
            return
        }
        pingCount += 1
        write(.ping(pingCount))
        flushIfNeeded()
    }

    /// While the worker does not take what we send, its clients are not read.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        for s in streams.values { s.setLinkWritable(writable) }
        context.fireChannelWritabilityChanged()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if !touched.isEmpty {
            flusher.touched(touched, on: context.eventLoop)
            touched.removeAll(keepingCapacity: true)
        }
        flushIfNeeded()
    }

    // MARK: called by streams on this event loop

    /// Opens a stream for a client; nil when the link cannot take one.
    func open(_ stream: GatewayStreamHandler, user: String, sessionHash: String, address: String) -> UInt32? {
        guard isUsable else { return nil }
        let id = nextStream
        nextStream = nextStream == .max ? 1 : nextStream + 1
        streams[id] = stream
        if let context, !context.channel.isWritable { stream.setLinkWritable(false) }
        write(.open(stream: id, user: user, sessionHash: sessionHash, address: address, resumeAfter: nil))
        flushIfNeeded()
        return id
    }

    func clientText(_ id: UInt32, _ payload: ByteBuffer) {
        guard streams[id] != nil else { return }
        write(.clientText(stream: id, payload: payload))
    }

    /// Tells the worker this client's queue is short again (it paces a replay by it).
    func streamRoom(_ id: UInt32) {
        guard streams[id] != nil else { return }
        write(.room(stream: id))
        flushIfNeeded()
    }

    func clientClosed(_ id: UInt32) {
        guard streams.removeValue(forKey: id) != nil else { return }
        write(.clientClosed(stream: id))
        flushIfNeeded()
    }

    private func write(_ frame: LinkFrame) {
        guard let context else { return }
        context.write(wrapOutboundOut(frame), promise: nil)
        needsFlush = true
    }

    func flushIfNeeded() {
        guard needsFlush, let context else { return }
        needsFlush = false
        context.flush()
    }
}

struct LinkDown: Error, CustomStringConvertible {
    var description: String { "worker link down" }
}

/// When the clients of one gateway event loop are flushed. With no delay, at the end of
/// every read from a worker link. With a delay D, at most once per D per event loop: the
/// first burst after a quiet D is flushed at once, later ones wait for the rest of D, so
/// under load several messages leave in one write (and one TLS record batch) per client
/// for at most D of added latency (`--flush-coalesce-ms`).
final class FlushCoalescer {
    private let delay: TimeAmount
    private var dirty: [GatewayStreamHandler] = []
    private var scheduled = false
    private var lastFlush = NIODeadline.distantPast

    init(delay: TimeAmount) {
        self.delay = delay
    }

    func touched(_ streams: [GatewayStreamHandler], on loop: EventLoop) {
        dirty.append(contentsOf: streams)
        guard !scheduled else { return }
        let now = NIODeadline.now()
        if delay == .zero || now - lastFlush >= delay {
            flush(now)
            return
        }
        scheduled = true
        let bound = NIOLoopBound(self, eventLoop: loop)
        loop.scheduleTask(deadline: lastFlush + delay) {
            let f = bound.value
            f.scheduled = false
            f.flush(.now())
        }
    }

    private func flush(_ now: NIODeadline) {
        lastFlush = now
        let streams = dirty
        dirty.removeAll(keepingCapacity: true)
        for s in streams { s.flushIfNeeded() }
    }
}

/// Workers whose link just failed or went silent, as a plain value: new streams skip each
/// for `holdNs` (3 s), since the coordinator may route to it until its lease runs out, and a
/// connect to a cut host only fails after its timeout.
struct AvoidedWorkers: Sendable {
    static let holdNs: UInt64 = 3_000_000_000
    private var until: [String: UInt64] = [:]

    mutating func linkLost(_ worker: String, nowNs: UInt64) {
        until[worker] = nowNs + Self.holdNs
    }

    /// Whether new streams skip `worker` now (an expired entry is forgotten).
    mutating func avoids(_ worker: String, nowNs: UInt64) -> Bool {
        guard let t = until[worker] else { return false }
        if nowNs < t { return true }
        until.removeValue(forKey: worker)
        return false
    }

    var count: Int { until.count }
}

/// This gateway's links: one per (event loop, worker), made when a stream first needs it,
/// so a client's stream and its link share a thread and no frame hops between threads.
final class GatewayLinks: Sendable {
    private final class Table {
        var links: [String: EventLoopFuture<NIOLoopBound<GatewayLinkHandler>>] = [:]
        var avoided = AvoidedWorkers()
        let flusher: FlushCoalescer
        let keepalive: StreamKeepalive
        init(flusher: FlushCoalescer, keepalive: StreamKeepalive) {
            self.flusher = flusher
            self.keepalive = keepalive
        }
    }

    private let tables: [ObjectIdentifier: NIOLoopBoundBox<Table>]
    private let gatewayID: String
    private let auth: LinkAuth
    private let logger: Logger
    private let deadAfter: TimeAmount

    init(group: EventLoopGroup, gatewayID: String, auth: LinkAuth, logger: Logger, flushDelay: TimeAmount = .zero,
         pingInterval: TimeAmount = .seconds(30), linkTimeout: TimeAmount = .seconds(10)) {
        self.deadAfter = linkTimeout
        var tables: [ObjectIdentifier: NIOLoopBoundBox<Table>] = [:]
        for loop in group.makeIterator() {
            tables[ObjectIdentifier(loop)] = .makeBoxSendingValue(
                Table(flusher: FlushCoalescer(delay: flushDelay), keepalive: StreamKeepalive(interval: pingInterval)), eventLoop: loop)
        }
        self.tables = tables
        self.gatewayID = gatewayID
        self.auth = auth
        self.logger = logger
    }

    /// The keepalive timer of `loop`'s client streams (called on `loop`).
    func keepalive(on loop: EventLoop) -> StreamKeepalive? {
        guard let table = tables[ObjectIdentifier(loop)] else { return nil }
        table.value.keepalive.start(on: loop)
        return table.value.keepalive
    }

    /// The link to `worker` for streams of `loop` (called on `loop`), connecting it if needed.
    /// The handler comes loop-bound: it is only ever touched on `loop`.
    func link(worker: String, endpoint: Endpoint, on loop: EventLoop) -> EventLoopFuture<NIOLoopBound<GatewayLinkHandler>> {
        guard let table = tables[ObjectIdentifier(loop)] else { return loop.makeFailedFuture(LinkDown()) }
        if table.value.avoided.avoids(worker, nowNs: NIODeadline.now().uptimeNanoseconds) { return loop.makeFailedFuture(LinkDown()) }
        if let existing = table.value.links[worker] {
            return existing.flatMapThrowing { link in
                guard link.value.isUsable else { throw LinkDown() }
                return link
            }
        }
        let ready = loop.makePromise(of: Void.self)
        let gatewayID = self.gatewayID, auth = self.auth, logger = self.logger, deadAfter = self.deadAfter
        let forget: @Sendable (Bool) -> Void = { avoid in
            loop.execute {
                table.value.links.removeValue(forKey: worker)
                if avoid { table.value.avoided.linkLost(worker, nowNs: NIODeadline.now().uptimeNanoseconds) }
            }
        }
        let connected = ClientBootstrap(group: loop)
            .connectTimeout(min(.seconds(2), deadAfter))
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    let handler = try GatewayLinkHandler(workerID: worker, gatewayID: gatewayID, auth: auth, logger: logger,
                                                         ready: ready, flusher: table.value.flusher, deadAfter: deadAfter, onClose: forget)
                    try ch.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(LinkFrameDecoder()),
                        MessageToByteHandler(LinkFrameEncoder()),
                        handler,
                    ])
                }
            }
            .connect(to: endpoint)
        let link = connected.flatMap { channel in
            let timeout = loop.scheduleTask(in: .seconds(3)) { channel.close(promise: nil) }
            return ready.futureResult.flatMapThrowing {
                timeout.cancel()
                return NIOLoopBound(try channel.pipeline.syncOperations.handler(type: GatewayLinkHandler.self), eventLoop: loop)
            }
        }
        link.whenFailure { error in
            ready.fail(LinkDown())
            // A connect that timed out (a cut host) is avoided; one refused at once (a worker
            // restarting) is simply tried again.
            if case ChannelError.connectTimeout = error { forget(true) } else { forget(false) }
        }
        table.value.links[worker] = link
        return link
    }
}
