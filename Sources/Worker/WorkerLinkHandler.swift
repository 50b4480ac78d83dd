import ChatCore
import Logging
import NIOCore
import Proto

/// Shared services a link needs.
struct WorkerContext: Sendable {
    let workerID: String
    let hub: Hub
    let store: MessageStore
    let limiter: RateLimiterClient
    let coordinator: CoordinatorLink
    let logger: Logger
    let maxHeldFrames: Int
    let sessions: SessionStore
    let auth: LinkAuth
}

/// One gateway link: the handshake, then every client stream the gateway opens on it.
/// Each stream is a `StreamStateMachine` run here, on the link's event loop; there is no
/// task, channel or handler per client. Live messages reach this link once (from the Hub)
/// and leave it as one `deliver` frame naming every stream they go to.
final class WorkerLinkHandler: ChannelInboundHandler {
    typealias InboundIn = LinkFrame
    typealias OutboundOut = LinkFrame
    typealias Machine = StreamStateMachine<ByteBuffer, ByteBuffer>

    struct Stream {
        var machine: Machine
        let info: ConnectionInfo
        let sessionHash: String
        /// A replay's next page, waiting for the gateway's `room`.
        var outputWaiters: [EventLoopPromise<Void>] = []
    }

    private enum Handshake {
        case awaitingHello
        case awaitingProof(gatewayNonce: [UInt8], workerNonce: [UInt8], gateway: String)
        case done(gateway: String)
    }

    let ctx: WorkerContext
    private var handshake = Handshake.awaitingHello
    private var context: ChannelHandlerContext?
    private var streams: [UInt32: Stream] = [:]
    private var tickTask: RepeatedTask?
    private var needsFlush = false
    private var logger: Logger

    init(ctx: WorkerContext) {
        self.ctx = ctx
        self.logger = ctx.logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // A peer that does not finish the handshake soon is dropped.
        let channel = context.channel
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: .seconds(5)) {
            if case .done = bound.value.handshake { return }
            channel.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        tickTask?.cancel()
        if case .done = handshake {
            ctx.hub.removeLink(self, eventLoop: context.eventLoop)
            for id in Array(streams.keys) { event(id) { $0.clientClosed() } }
            logger.info("gateway link closed")
        }
        self.context = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.warning("gateway link error; closing", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        lastInbound = .now()
        switch handshake {
        case .awaitingHello:
            guard case let .hello(version, gateway, nonce) = frame, version == LinkFrame.version,
                  nonce.count == LinkFrame.nonceBytes, let mine = try? LinkAuth.nonce() else {
                logger.warning("link refused: bad hello")
                context.close(promise: nil)
                return
            }
            handshake = .awaitingProof(gatewayNonce: nonce, workerNonce: mine, gateway: gateway)
            let proof = ctx.auth.workerProof(gateway: gateway, worker: ctx.workerID, gatewayNonce: nonce, workerNonce: mine)
            context.writeAndFlush(wrapOutboundOut(.challenge(version: LinkFrame.version, worker: ctx.workerID, nonce: mine, proof: proof)), promise: nil)
        case let .awaitingProof(gatewayNonce, workerNonce, gateway):
            guard case let .proof(proof) = frame,
                  ctx.auth.verify(proof, expected: ctx.auth.gatewayProof(gateway: gateway, worker: ctx.workerID,
                                                                         gatewayNonce: gatewayNonce, workerNonce: workerNonce)) else {
                logger.warning("link refused: the gateway did not prove the cluster secret")
                context.close(promise: nil)
                return
            }
            handshake = .done(gateway: gateway)
            logger[metadataKey: "gateway.id"] = "\(gateway)"
            logger.info("gateway link up")
            ctx.hub.addLink(self, eventLoop: context.eventLoop)
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            // Ticks at least four times per idle period, so the touch every half period (checked at
            // ticks) always lands before the session's idle expiry, however short it is configured.
            let tick = TimeAmount.milliseconds(max(50, min(1000, Int64(ctx.sessions.idleSeconds) * 250)))
            tickTask = context.eventLoop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { _ in
                bound.value.tick()
            }
        case .done:
            linkFrame(frame, context: context)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushIfNeeded()
    }

    /// While the gateway does not take what we send, take no more of its clients' frames:
    /// the backpressure reaches the senders over TCP; what readers are owed still goes out.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let paused = !context.channel.isWritable
        if paused && !readingPaused { unwritableSince = .now() }
        readingPaused = paused
        context.channel.setOption(.autoRead, value: !readingPaused).whenFailure { _ in }
        if !readingPaused { lastInbound = .now() }
        context.fireChannelWritabilityChanged()
    }

    private func linkFrame(_ frame: LinkFrame, context: ChannelHandlerContext) {
        switch frame {
        case let .open(stream, user, hash, address, _):
            guard streams[stream] == nil, !user.isEmpty else {
                write(.close(stream: stream, code: 1002))
                return
            }
            let info = ConnectionInfo(id: "\(ctx.workerID).\(UInt64.random(in: 0...UInt64.max))", user: user)
            let machine = Machine(nowMs: SessionStore.nowMs(), idleMs: Int64(ctx.sessions.idleSeconds) * 1000, maxHeld: ctx.maxHeldFrames)
            streams[stream] = Stream(machine: machine, info: info, sessionHash: hash)
            Telemetry.workerStreams.increment()
            ctx.hub.add(Hub.Entry(info: info, sessionHash: hash, stream: stream, link: NIOLoopBound(self, eventLoop: context.eventLoop), eventLoop: context.eventLoop))
            logger.debug("stream opened", metadata: ["connection.id": "\(info.id)", "user": "\(user)", "client.address": "\(address)"])
            event(stream) { $0.opened() }
        case let .clientText(stream, payload):
            event(stream) { $0.clientFrame(payload, bytes: payload.readableBytes) }
        case let .clientClosed(stream):
            event(stream) { $0.clientClosed() }
        case .ping(let v):
            write(.pong(v))
        case .pong:
            break
        case let .room(stream):
            // The client's queue is short again: the next page of its replay may go.
            guard streams[stream] != nil else { return }
            let waiters = streams[stream]!.outputWaiters
            streams[stream]!.outputWaiters = []
            for w in waiters { w.succeed(()) }
        case .hello, .challenge, .proof, .send, .deliver, .close, .flow, .askRoom, .draining:
            logger.warning("unexpected frame on a gateway link; closing")
            context.close(promise: nil)
        }
    }

    // MARK: running the machines

    /// Feeds one event to a stream's machine and performs what it returns.
    private func event(_ id: UInt32, _ body: (inout Machine) -> [Machine.Action]) {
        guard streams[id] != nil else { return }
        let actions = body(&streams[id]!.machine)
        perform(actions, stream: id)
        // A stream that ended without anything to report (closed during its session check)
        // is forgotten here; the others were forgotten by their close or reportClosed action.
        if let s = streams[id], s.machine.isClosed { forget(id, s) }
    }

    private func perform(_ actions: [Machine.Action], stream id: UInt32) {
        for action in actions {
            guard let stream = streams[id] else { return }
            switch action {
            case .checkSession:
                checkSession(id, stream)
            case .fetchWelcome:
                fetchWelcome(id, stream)
            case let .send(payload):
                write(.send(stream: id, payload: payload))
            case let .process(frame):
                process(frame, stream: id, info: stream.info)
            case .pauseInput:
                write(.flow(stream: id, read: false))
            case .resumeInput:
                write(.flow(stream: id, read: true))
            case .touchSession:
                touchSession(id, stream)
            case let .close(code):
                // The entry stays until reportClosed (if the open was reported) or the end of `event`.
                write(.close(stream: id, code: code))
                if code == 4008 { logger.info("stream too slow; closing", metadata: ["connection.id": "\(stream.info.id)"]) }
            case .reportClosed:
                let info = stream.info
                _ = ctx.coordinator.callFuture(.connectionClosed(worker: ctx.workerID, connection: info))
                forget(id, stream)
            }
        }
    }

    private func forget(_ id: UInt32, _ stream: Stream) {
        if let gone = streams.removeValue(forKey: id) {
            Telemetry.workerStreams.decrement()
            for w in gone.outputWaiters { w.fail(StreamGone()) }
        }
        ctx.hub.remove(stream.info.id)
        logger.debug("stream closed", metadata: ["connection.id": "\(stream.info.id)"])
    }

    private var bound: NIOLoopBound<WorkerLinkHandler>? {
        context.map { NIOLoopBound(self, eventLoop: $0.eventLoop) }
    }

    private func checkSession(_ id: UInt32, _ stream: Stream) {
        guard let bound, let loop = context?.eventLoop else { return }
        let user = stream.info.user
        ctx.sessions.lookup(hash: stream.sessionHash, on: loop).whenComplete { result in
            let h = bound.value
            switch result {
            case let .success(session):
                // The worker takes no identity on trust: the session must be live and the gateway's user.
                let valid = session.flatMap { $0.user == user ? $0.endsAtMs : nil }
                h.event(id) { $0.sessionChecked(endsAtMs: valid, nowMs: SessionStore.nowMs()) }
            case .failure:
                h.event(id) { $0.sessionCheckFailed() }
            }
            h.flushIfNeeded()
        }
    }

    private func fetchWelcome(_ id: UInt32, _ stream: Stream) {
        guard let bound, let loop = context?.eventLoop else { return }
        let ctx = self.ctx, info = stream.info
        ctx.hub.markReported(info.id)
        ctx.coordinator.callFuture(.connectionOpened(worker: ctx.workerID, connection: info)).hop(to: loop)
            .map { response -> [String]? in
                if case let .opened(list) = response { return list }
                if response == .denied { return nil }
                return ctx.hub.bestKnownOnline
            }
            .flatMapErrorThrowing { _ in ctx.hub.bestKnownOnline }
            .and(ctx.store.recent(room: ChatLimits.lobby, on: loop).flatMapErrorThrowing { _ in [] })
            .whenSuccess { online, history in
                guard let online else {
                    // The user has as many sockets open as allowed (--max-sockets-per-user).
                    let h = bound.value
                    h.logger.info("too many sockets for this user; refused", metadata: ["user": "\(info.user)"])
                    h.event(id) { $0.close(4009) }
                    h.flushIfNeeded()
                    return
                }
                var everyone = online
                if !everyone.contains(info.user) { everyone.append(info.user) }
                let json = ServerFrame.welcome(user: info.user, room: ChatLimits.lobby, online: everyone.sorted(), history: history).json
                let h = bound.value
                h.event(id) { $0.welcomeReady(ByteBuffer(string: json), lastHistory: history.last?.id) }
                h.flushIfNeeded()
            }
    }

    /// After the subscription was down, logouts (and credential changes) announced meanwhile
    /// were missed: every checked stream's session is looked up again, and a gone one closes 4001.
    func recheckSessions() {
        guard let bound, let loop = context?.eventLoop else { return }
        for (id, stream) in streams where stream.machine.sessionEndsAt != nil {
            let user = stream.info.user, connectionID = stream.info.id
            ctx.sessions.lookup(hash: stream.sessionHash, on: loop).whenSuccess { session in
                guard session?.user != user else { return }
                let h = bound.value
                h.logger.info("session gone while the subscription was down; closing", metadata: ["connection.id": "\(connectionID)"])
                h.event(id) { $0.sessionLost() }
                h.flushIfNeeded()
            }
        }
    }

    private func touchSession(_ id: UInt32, _ stream: Stream) {
        guard let bound, let loop = context?.eventLoop, let endsAt = stream.machine.sessionEndsAt else { return }
        let connectionID = stream.info.id
        ctx.sessions.keepAlive(hash: stream.sessionHash, endsAtMs: endsAt, on: loop).whenSuccess { alive in
            guard !alive else { return }
            let h = bound.value
            h.logger.info("session ended; closing", metadata: ["connection.id": "\(connectionID)"])
            h.event(id) { $0.sessionLost() }
            h.flushIfNeeded()
        }
    }

    private var lastInbound = NIODeadline.now()
    /// Not reading while the gateway takes nothing: its pings wait unread meanwhile.
    private var readingPaused = false
    private var unwritableSince = NIODeadline.now()

    private func tick() {
        // The gateway pings every 2 s: a link silent for 15 s is gone (a cut network closes nothing).
        if !readingPaused, NIODeadline.now() - lastInbound > .seconds(15), let context {
            logger.warning("gateway link silent; closing it")
            context.close(promise: nil)
            return
        }
        // A gateway that takes nothing for 30 s (stopped, or a cut network with a zero window)
        // would make this worker queue every broadcast for it: the link goes instead.
        if readingPaused, NIODeadline.now() - unwritableSince > .seconds(30), let context {
            logger.warning("gateway link not draining for 30 s; closing it")
            context.close(promise: nil)
            return
        }
        let now = SessionStore.nowMs()
        for id in Array(streams.keys) { event(id) { $0.tick(nowMs: now) } }
        flushIfNeeded()
    }

    // MARK: client frames

    private func reply(_ id: UInt32, _ frame: ServerFrame) {
        guard streams[id] != nil else { return }
        write(.send(stream: id, payload: ByteBuffer(string: frame.json)))
    }

    private func done(_ id: UInt32) {
        event(id) { $0.frameDone() }
        flushIfNeeded()
    }

    private func process(_ bytes: ByteBuffer, stream id: UInt32, info: ConnectionInfo) {
        guard let bound, let loop = context?.eventLoop else { return }
        let ctx = self.ctx
        switch ClientFrame.decode(bytes.readableBytesView) {
        case let .failure(error):
            reply(id, .error(code: error.code.rawValue, message: error.message, ref: error.ref, retryAfterMs: nil))
            // Next frame on the next loop turn: a burst of bad frames must not recurse frame by frame.
            loop.execute { bound.value.done(id) }
        case let .success(.send(body, ref, room)):
            ctx.limiter.check(.message, key: info.user, on: loop).flatMap { decision -> EventLoopFuture<ServerFrame> in
                guard decision.allowed else {
                    Telemetry.rateLimited("message").increment()
                    let limited = ServerFrame.error(code: "rate_limited", message: "sending too fast", ref: ref,
                                                    retryAfterMs: max(1, Int((decision.retryAfter * 1000).rounded(.up))))
                    // A retry of a stored message is answered, not limited: the client only lost its ack.
                    guard let ref else { return loop.makeSucceededFuture(limited) }
                    return ctx.store.storedID(user: info.user, ref: ref, on: loop)
                        .map { stored in stored.map { ServerFrame.ack(ref: ref, id: $0) } ?? limited }
                        .flatMapErrorThrowing { _ in limited }
                }
                return ctx.store.append(room: room, from: info.user, text: body, ref: ref, on: loop)
                    .map { id, new in
                        if new { Telemetry.messagesStored.increment() }
                        return ServerFrame.ack(ref: ref, id: id)
                    }
                    .flatMapErrorThrowing { error in
                        ctx.logger.warning("message not stored", metadata: ["error": "\(error)", "user": "\(info.user)"])
                        return .error(code: "unavailable", message: "temporarily unavailable; retry with the same ref", ref: ref, retryAfterMs: 1000)
                    }
            }.whenSuccess { frame in
                let h = bound.value
                h.reply(id, frame)
                h.done(id)
            }
        case let .success(.sync(since, room)):
            // A sync replays history from Redis: it is charged to the user's sync limit.
            ctx.limiter.check(.sync, key: info.user, on: loop).whenSuccess { decision in
                let h = bound.value
                guard decision.allowed else {
                    Telemetry.rateLimited("sync").increment()
                    h.reply(id, .error(code: "rate_limited", message: "syncing too often", ref: nil,
                                       retryAfterMs: max(1, Int((decision.retryAfter * 1000).rounded(.up)))))
                    h.done(id)
                    return
                }
                h.replay(since: since, room: room, stream: id)
            }
        }
    }

    /// Asks the gateway to say when this stream's client has room again, and completes then;
    /// fails if the stream goes away meanwhile. Frames are ordered on the link, so the answer
    /// comes after the gateway has queued the page sent before.
    private func outputReady(_ id: UInt32, on loop: EventLoop) -> EventLoopFuture<Void> {
        guard streams[id] != nil else { return loop.makeFailedFuture(StreamGone()) }
        let p = loop.makePromise(of: Void.self)
        streams[id]!.outputWaiters.append(p)
        write(.askRoom(stream: id))
        flushIfNeeded()
        return p.futureResult
    }

    private func replay(since: MessageID, room: String, stream id: UInt32) {
        guard let bound, let loop = context?.eventLoop else { return }
        event(id) { $0.replayBegan(); return [] }
        // Paced by the reader: each page waits until the gateway has room for this client, so
        // a large sync to a slow (but reading) client is not cut off with 4008.
        ctx.store.since(since, room: room, batch: MessageStore.replayPage, on: loop, ready: { bound.value.outputReady(id, on: loop) }) { page in
            let h = bound.value
            h.event(id) { $0.replayed(page.map { (id: $0.id, payload: ByteBuffer(string: $0.json)) }) }
            h.flushIfNeeded()
        }.whenComplete { result in
            let h = bound.value
            switch result {
            case let .success(recovered):
                let synced = ByteBuffer(string: ServerFrame.synced(room: room, recovered: recovered).json)
                h.event(id) { $0.replayEnded(synced) }
            case .failure:
                h.reply(id, .error(code: "unavailable", message: "history temporarily unavailable", ref: nil, retryAfterMs: 1000))
                h.event(id) { $0.replayEnded(nil) }
            }
            h.done(id)
        }
    }

    // MARK: fan-out (called on this link's event loop by the Hub)

    /// One live message for every stream on this link that should have it: one `deliver` frame.
    func deliverLive(_ frame: SharedFrame) {
        var targets: [UInt32] = []
        var slow: [UInt32] = []
        for i in streams.indices {
            switch streams.values[i].machine.live(id: frame.message.id, payload: frame.payload) {
            case .send: targets.append(streams.keys[i])
            case .closeSlow: slow.append(streams.keys[i])
            case .held, .skip: break
            }
        }
        if !targets.isEmpty {
            Telemetry.workerDeliveries.increment(by: targets.count)
            write(.deliver(payload: frame.payload, streams: targets))
        }
        for id in slow { event(id) { $0.close(4008) } }
        flushIfNeeded()
    }

    /// An event for every stream (presence), in one `deliver` frame.
    func deliverEvent(_ payload: ByteBuffer) {
        var targets: [UInt32] = []
        for i in streams.indices where streams.values[i].machine.event(payload) == .send {
            targets.append(streams.keys[i])
        }
        if !targets.isEmpty { write(.deliver(payload: payload, streams: targets)) }
        flushIfNeeded()
    }

    /// The server ends one stream (logout, drain).
    func closeStream(_ id: UInt32, code: UInt16) {
        event(id) { $0.close(code) }
        flushIfNeeded()
    }

    /// This worker drains: the gateway opens no new streams here.
    func announceDraining() {
        write(.draining)
        flushIfNeeded()
    }

    // MARK: writing

    private func write(_ frame: LinkFrame) {
        guard let context else { return }
        context.write(wrapOutboundOut(frame), promise: nil)
        needsFlush = true
    }

    private func flushIfNeeded() {
        guard needsFlush, let context else { return }
        needsFlush = false
        context.flush()
    }
}

/// A stream that ended while something waited for it.
struct StreamGone: Error {}
