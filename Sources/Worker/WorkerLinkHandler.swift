import ChatCore
import Logging
import NIOCore
import Proto

/// Shared services a link needs.
struct WorkerContext: Sendable {
    let workerID: String
    let hub: Hub
    let rooms: RoomStore
    let devices: DeviceStore
    let historyCount: Int
    let limiter: RateLimiterClient
    let coordinator: CoordinatorLink
    let logger: Logger
    let maxHeldFrames: Int
    let sessions: SessionStore
    let auth: LinkAuth
    /// A gateway link silent this long is gone (`--gateway-link-timeout-ms`; gateways ping
    /// every fifth of their own timeout).
    var linkTimeout: TimeAmount = .seconds(15)
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
        /// The rooms this stream holds a subscription of in the Hub, and whether it watches its user.
        var retained: Set<String> = []
        var watching = false
        /// Bumped by every membership change heard for the stream: a room list read before one is stale.
        var membershipVersion = 0
        /// The device this connection is bound to (by `device`) and its `to_device` delivery.
        var mailbox = DeviceMailbox<ByteBuffer>()
    }

    private enum Handshake {
        case awaitingHello
        case awaitingProof(gatewayNonce: [UInt8], workerNonce: [UInt8], gateway: String)
        case done(gateway: String)
    }

    let ctx: WorkerContext
    private var handshake = Handshake.awaitingHello
    private var context: ChannelHandlerContext?
    private(set) var streams: [UInt32: Stream] = [:]
    /// Streams by room (those past their welcome) and by user: fan-out looks only where it goes.
    private var roomIndex: [String: Set<UInt32>] = [:]
    private var userIndex: [String: Set<UInt32>] = [:]
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
    func event(_ id: UInt32, _ body: (inout Machine) -> [Machine.Action]) {
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
            for room in gone.retained { unindex(id, room: room) }
            if gone.watching {
                userIndex[gone.info.user]?.remove(id)
                if userIndex[gone.info.user]?.isEmpty == true { userIndex.removeValue(forKey: gone.info.user) }
                ctx.hub.unwatchUser(gone.info.user)
            }
        }
        ctx.hub.remove(stream.info.id)
        logger.debug("stream closed", metadata: ["connection.id": "\(stream.info.id)"])
    }

    private var bound: NIOLoopBound<WorkerLinkHandler>? {
        context.map { NIOLoopBound(self, eventLoop: $0.eventLoop) }
    }

    private func checkSession(_ id: UInt32, _ stream: Stream) {
        guard let bound, let loop = context?.eventLoop else { return }
        let user = stream.info.user, sessions = ctx.sessions, hash = stream.sessionHash
        Self.heldRead(holdMs: ctx.rooms.holdMs, on: loop, while: { bound.value.streams[id] != nil }) {
            sessions.lookup(hash: hash, on: loop)
        }.whenComplete { result in
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

    /// The welcome: once the user's channel is subscribed (so no membership change is missed
    /// from here on), the coordinator's online list, the user's rooms and the lobby's history.
    private func fetchWelcome(_ id: UInt32, _ stream: Stream) {
        guard let bound, let loop = context?.eventLoop else { return }
        let ctx = self.ctx, info = stream.info
        ctx.hub.markReported(info.id)
        streams[id]?.watching = true
        userIndex[info.user, default: []].insert(id)
        let online = ctx.coordinator.callFuture(.connectionOpened(worker: ctx.workerID, connection: info)).hop(to: loop)
            .map { response -> [String]? in
                if case let .opened(list) = response { return list }
                if response == .denied { return nil }
                return ctx.hub.bestKnownOnline
            }
            .flatMapErrorThrowing { _ in ctx.hub.bestKnownOnline }
        let holdMs = ctx.rooms.holdMs
        let snapshot = ctx.hub.watchUser(info.user, on: loop).flatMap {
            // The hold starts once the user's channel is subscribed: waiting for that is not a read.
            Self.heldRead(holdMs: holdMs, on: loop, while: { bound.value.streams[id] != nil }) {
                ctx.rooms.rooms(user: info.user, on: loop)
                    .and(ctx.rooms.recent(room: ChatLimits.lobby, count: ctx.historyCount, on: loop))
            }
        }
        online.and(snapshot).whenComplete { result in
            let h = bound.value
            defer { h.flushIfNeeded() }
            guard case let .success((online, (rooms, history))) = result else {
                // Redis is down or the stream went away meanwhile: the client comes back later.
                h.event(id) { $0.close(1013) }
                return
            }
            guard let online else {
                // The user has as many sockets open as allowed (--max-sockets-per-user).
                h.logger.info("too many sockets for this user; refused", metadata: ["user": "\(info.user)"])
                h.event(id) { $0.close(4009) }
                return
            }
            var everyone = online
            if !everyone.contains(info.user) { everyone.append(info.user) }
            let json = ServerFrame.welcome(user: info.user, room: ChatLimits.lobby, online: everyone.sorted(),
                                           history: history, rooms: rooms.json).json
            var starts = rooms.last
            // The client has the lobby up to the history it gets, whatever was added since.
            starts[ChatLimits.lobby] = history.last?.id ?? .zero
            h.event(id) { $0.welcomeReady(ByteBuffer(string: json), rooms: starts) }
            h.installRooms(id, snapshot: starts)
        }
    }

    /// After the welcome: the stream is indexed under its rooms and holds their subscriptions.
    /// A room this worker already relayed past what the stream starts from may have passed
    /// this loop before the stream was indexed: those events are replayed to it.
    private func installRooms(_ id: UInt32, snapshot: [String: MessageID]) {
        guard let stream = streams[id], !stream.machine.isClosed else { return }
        for (room, start) in stream.machine.rooms {
            let relayed = retainRoom(id, room: room, start: start)
            if relayed > start { replay(since: start, room: room, stream: id, fromClient: false) }
        }
    }

    @discardableResult
    private func retainRoom(_ id: UInt32, room: String, start: MessageID) -> MessageID {
        guard streams[id] != nil, !streams[id]!.retained.contains(room) else { return .zero }
        streams[id]!.retained.insert(room)
        roomIndex[room, default: []].insert(id)
        return ctx.hub.retain(room: room, start: start)
    }

    private func releaseRoom(_ id: UInt32, room: String) {
        guard streams[id]?.retained.remove(room) != nil else { return }
        unindex(id, room: room)
    }

    private func unindex(_ id: UInt32, room: String) {
        roomIndex[room]?.remove(id)
        if roomIndex[room]?.isEmpty == true { roomIndex.removeValue(forKey: room) }
        ctx.hub.release(room: room)
    }

    /// After the subscription was down, logouts, credential changes and membership changes
    /// announced meanwhile were missed: every checked stream's session is looked up again (a
    /// gone one closes 4001), and its rooms are read again; when they changed, the stream's
    /// rooms follow and the client gets a fresh `rooms` frame.
    func recheckStreams() {
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
            reconcile(id, attempts: 3)
        }
    }

    /// Reads the stream's rooms again and follows them, unless a membership change was heard
    /// meanwhile (then the list may predate it: read again).
    private func reconcile(_ id: UInt32, attempts: Int) {
        guard let bound, let loop = context?.eventLoop, let stream = streams[id], stream.machine.phase == .live, attempts > 0 else { return }
        let version = stream.membershipVersion
        ctx.rooms.rooms(user: stream.info.user, on: loop).whenSuccess { rooms in
            let h = bound.value
            guard let s = h.streams[id] else { return }
            if s.membershipVersion != version { h.reconcile(id, attempts: attempts - 1); return }
            h.reconcileRooms(id, rooms: rooms)
        }
    }

    private func reconcileRooms(_ id: UInt32, rooms: (json: String, last: [String: MessageID])) {
        guard let stream = streams[id], stream.machine.phase == .live else { return }
        var changed = false
        for room in stream.machine.memberRooms where rooms.last[room] == nil {
            if streams[id]!.machine.left(room: room) { changed = true }
            releaseRoom(id, room: room)
        }
        for (room, last) in rooms.last where !stream.machine.isMember(room) {
            join(id, room: room, lastID: last)
            changed = true
        }
        if changed { reply(id, .object(type: "rooms", ref: nil, fields: "\"rooms\":" + rooms.json)) }
        flushIfNeeded()
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
        // The gateway pings (every 2 s by default): a silent link is gone (a cut network closes nothing).
        if !readingPaused, NIODeadline.now() - lastInbound > ctx.linkTimeout, let context {
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

    func reply(_ id: UInt32, _ frame: ServerFrame) {
        guard streams[id] != nil else { return }
        write(.send(stream: id, payload: ByteBuffer(string: frame.json)))
    }

    func done(_ id: UInt32) {
        event(id) { $0.frameDone() }
        flushIfNeeded()
    }

    /// Runs on the link's loop; `body` gets the handler back there.
    var loopBound: (NIOLoopBound<WorkerLinkHandler>, EventLoop)? {
        guard let bound, let loop = context?.eventLoop else { return nil }
        return (bound, loop)
    }

    private func process(_ bytes: ByteBuffer, stream id: UInt32, info: ConnectionInfo) {
        guard let (bound, loop) = loopBound else { return }
        switch ClientFrame.decode(bytes.readableBytesView) {
        case let .failure(error):
            reply(id, .error(code: error.code.rawValue, message: error.message, ref: error.ref, retryAfterMs: nil))
            // Next frame on the next loop turn: a burst of bad frames must not recurse frame by frame.
            loop.execute { bound.value.done(id) }
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
                h.replay(since: since, room: room, stream: id, fromClient: true)
            }
        case let .success(frame):
            switch frame {
            case .device, .deviceRemove, .keys, .toDevice, .toDeviceAck, .backupPut, .backupGet:
                e2eeFrame(frame, stream: id, info: info)
            default:
                roomFrame(frame, stream: id, info: info)
            }
        }
    }

    // MARK: end-to-end encryption primitives (opaque payloads)

    private func e2eeFrame(_ frame: ClientFrame, stream id: UInt32, info: ConnectionInfo) {
        guard let (bound, loop) = loopBound, let stream = streams[id] else { return }
        let ctx = self.ctx, user = info.user, ref = frame.ref, bind = stream.mailbox.device
        @Sendable func refusedFrame(_ code: String, _ message: String) -> ServerFrame { .error(code: code, message: message, ref: ref, retryAfterMs: nil) }
        let work: EventLoopFuture<ServerFrame> = ctx.limiter.check(.request, key: user, on: loop).flatMap { decision in
            guard decision.allowed else {
                Telemetry.rateLimited("request").increment()
                return loop.makeSucceededFuture(.error(code: "rate_limited", message: "too many requests", ref: ref,
                                                       retryAfterMs: max(1, Int((decision.retryAfter * 1000).rounded(.up)))))
            }
            switch frame {
            case let .device(deviceID, json, _):
                return ctx.devices.run(DeviceStore.putScript, [user, deviceID, json, String(ChatLimits.maxDevicesPerUser)], on: loop).map { outcome in
                    switch outcome {
                    case let .refused(code, message): return refusedFrame(code, message)
                    case .ok:
                        bound.value.bindDevice(id, device: deviceID)
                        return .ok(ref: ref)
                    }
                }
            case let .deviceRemove(deviceID, _):
                return ctx.devices.run(DeviceStore.removeScript, [user, deviceID], on: loop).map { outcome in
                    switch outcome {
                    case let .refused(code, message): return refusedFrame(code, message)
                    case .ok:
                        // Unbound everywhere by the user channel's event (the script published it).
                        return .ok(ref: ref)
                    }
                }
            case let .keys(users, _):
                var seen = Set<String>()
                let unique = users.filter { seen.insert($0).inserted }
                return ctx.devices.run(DeviceStore.keysScript, [user] + unique, on: loop).map { outcome in
                    switch outcome {
                    case let .refused(code, message): return refusedFrame(code, message)
                    case let .ok(items): return .object(type: "keys", ref: ref, fields: "\"devices\":" + DeviceStore.keysJSON(items))
                    }
                }
            case let .toDevice(messages, _):
                guard let from = bind else { return loop.makeSucceededFuture(refusedFrame("bad_request", "send device first: to_device goes from a device")) }
                var args = [user, from, String(DeviceStore.inboxMax), String(DeviceStore.inboxTTLms)]
                for m in messages { args += [m.user, m.device, m.payload] }
                return ctx.devices.run(DeviceStore.sendScript, args, on: loop).map { outcome in
                    if case let .refused(code, message) = outcome { return refusedFrame(code, message) }
                    return .ok(ref: ref)
                }
            case let .toDeviceAck(upto, _):
                guard let device = bind else { return loop.makeSucceededFuture(refusedFrame("bad_request", "send device first")) }
                return ctx.devices.ack(user: user, device: device, upto: upto, on: loop).map { .ok(ref: ref) }
            case let .backupPut(json, _):
                return ctx.devices.putBackup(user: user, json: json, on: loop).map { .ok(ref: ref) }
            case .backupGet:
                return ctx.devices.backup(user: user, on: loop).map { .object(type: "backup", ref: ref, fields: "\"backup\":" + ($0 ?? "null")) }
            default:
                return loop.makeSucceededFuture(refusedFrame("unknown_type", "unknown type"))
            }
        }
        work.flatMapErrorThrowing { error in
            ctx.logger.warning("request failed", metadata: ["error": "\(error)", "user": "\(user)"])
            return .error(code: "unavailable", message: "temporarily unavailable; retry", ref: ref, retryAfterMs: 1000)
        }.whenSuccess { reply in
            let h = bound.value
            h.reply(id, reply)
            h.done(id)
        }
    }

    /// Binds the stream to `device` and delivers its pending messages, page by page as the
    /// client reads them, then what was published meanwhile.
    private func bindDevice(_ id: UInt32, device: String) {
        guard let (bound, loop) = loopBound, let user = streams[id]?.info.user, let start = streams[id]?.mailbox.bind(device) else { return }
        let devices = ctx.devices, generation = start.generation
        @Sendable func page(after cursor: MessageID, first: Bool) -> EventLoopFuture<Void> {
            let go = first ? loop.makeSucceededVoidFuture() : bound.value.outputReady(id, on: loop)
            return go.flatMap { devices.pending(user: user, device: device, after: cursor, count: 100, on: loop) }.flatMap { messages in
                let h = bound.value
                guard h.streams[id] != nil else { return loop.makeSucceededVoidFuture() }
                for payload in h.streams[id]!.mailbox.pending(messages.map { (id: $0.id, payload: ByteBuffer(string: $0.json)) }, generation: generation) {
                    h.write(.send(stream: id, payload: payload))
                }
                h.flushIfNeeded()
                guard messages.count == 100, let last = messages.last else { return loop.makeSucceededVoidFuture() }
                return page(after: last.id, first: false)
            }
        }
        @Sendable func read(after: MessageID) {
            page(after: after, first: true).whenComplete { result in
                let h = bound.value
                guard h.streams[id] != nil, h.streams[id]!.mailbox.generation == generation else { return }
                if case .failure = result {
                    // Redis failed part way: go on from what was delivered, a moment later.
                    let resume = h.streams[id]!.mailbox.resumeAfter
                    loop.scheduleTask(in: .seconds(1)) { read(after: resume) }
                    return
                }
                switch h.streams[id]!.mailbox.fetched(generation: generation) {
                case let .done(payloads):
                    for payload in payloads { h.write(.send(stream: id, payload: payload)) }
                    h.flushIfNeeded()
                case let .reread(after):
                    read(after: after)
                }
            }
        }
        read(after: start.after)
    }

    /// Asks the gateway to say when this stream's client has room again, and completes then;
    /// fails if the stream goes away meanwhile. Frames are ordered on the link, so the answer
    /// comes after the gateway has queued the page sent before.
    func outputReady(_ id: UInt32, on loop: EventLoop) -> EventLoopFuture<Void> {
        guard streams[id] != nil else { return loop.makeFailedFuture(StreamGone()) }
        let p = loop.makePromise(of: Void.self)
        streams[id]!.outputWaiters.append(p)
        write(.askRoom(stream: id))
        flushIfNeeded()
        return p.futureResult
    }

    /// Messages per page of a replay: small enough that one page of the largest messages
    /// (20 × at most 24 KB of JSON) fits a client's queue with room to spare; the next page
    /// waits until the gateway says the queue is short again.
    static let replayPage = 20

    /// Replays `room` after `since` to the stream, page by page, each page read by a script
    /// that first checks the user is still in the room (so a removal cuts a replay short).
    /// `fromClient`: a `sync` (ends with `synced`, then the next frame); else the catch-up
    /// after the welcome.
    private func replay(since: MessageID, room: String, stream id: UInt32, fromClient: Bool) {
        guard let (bound, loop) = loopBound, let user = streams[id]?.info.user else { return }
        let rooms = ctx.rooms, holdMs = ctx.rooms.holdMs
        event(id) { $0.replayBegan(room: room); return [] }
        @Sendable func page(after cursor: MessageID, first: Bool) -> EventLoopFuture<Result<Bool, Refusal>> {
            let go = first ? loop.makeSucceededVoidFuture() : bound.value.outputReady(id, on: loop)
            return go.flatMap {
                // Each page has a hold of its own: a long replay does not use up the next one's.
                Self.heldRead(holdMs: holdMs, on: loop, while: { bound.value.streams[id] != nil }) {
                    rooms.page(user: user, room: room, after: cursor, count: Self.replayPage, on: loop)
                }
            }.flatMap { result in
                switch result {
                case let .failure(refusal): return loop.makeSucceededFuture(.failure(refusal))
                case let .success((messages, trimmed)):
                    let h = bound.value
                    if !messages.isEmpty {
                        h.event(id) { $0.replayed(room: room, messages.map { (id: $0.id, payload: ByteBuffer(string: $0.json)) }) }
                        h.flushIfNeeded()
                    }
                    guard messages.count == Self.replayPage, let last = messages.last else {
                        return loop.makeSucceededFuture(.success(trimmed.map { since >= $0 } ?? true))
                    }
                    return page(after: last.id, first: false)
                }
            }
        }
        page(after: since, first: true).whenComplete { result in
            let h = bound.value
            switch result {
            case let .success(.success(recovered)):
                let synced = fromClient ? ByteBuffer(string: ServerFrame.synced(room: room, recovered: recovered).json) : nil
                h.event(id) { $0.replayEnded(room: room, synced) }
            case let .success(.failure(refusal)):
                if fromClient { h.reply(id, .error(code: refusal.code, message: refusal.message, ref: nil, retryAfterMs: nil)) }
                h.event(id) { $0.replayEnded(room: room, nil) }
            case .failure:
                if fromClient { h.reply(id, .error(code: "unavailable", message: "history temporarily unavailable", ref: nil, retryAfterMs: 1000)) }
                h.event(id) { $0.replayEnded(room: room, nil) }
            }
            if fromClient { h.done(id) } else { h.flushIfNeeded() }
        }
    }

    // MARK: fan-out (called on this link's event loop by the Hub)

    /// One live history event for every stream on this link in its room: one `deliver` frame.
    func deliverLive(_ frame: SharedFrame) {
        guard let ids = roomIndex[frame.message.room] else { return }
        let room = frame.message.room
        var targets: [UInt32] = []
        var slow: [UInt32] = []
        for id in ids {
            switch streams[id]?.machine.live(room: room, id: frame.message.id, payload: frame.payload) {
            case .send?: targets.append(id)
            case .closeSlow?: slow.append(id)
            case .held?, .skip?, nil: break
            }
        }
        if !targets.isEmpty {
            Telemetry.workerDeliveries.increment(by: targets.count)
            write(.deliver(payload: frame.payload, streams: targets))
        }
        for id in slow { event(id) { $0.close(4008) } }
        flushIfNeeded()
    }

    /// A live-only event of a room (`member`, `room_updated`, `typing`), to its members here
    /// but the streams of `except` (a typer's own).
    func deliverRoomEvent(room: String, payload: ByteBuffer, except: String?) {
        guard let ids = roomIndex[room] else { return }
        var targets: [UInt32] = []
        for id in ids {
            guard let s = streams[id], s.info.user != except else { continue }
            if streams[id]!.machine.roomEvent(room: room, payload: payload) == .send { targets.append(id) }
        }
        if !targets.isEmpty { write(.deliver(payload: payload, streams: targets)) }
        flushIfNeeded()
    }

    /// An event of the user's channel, for every stream of the user here: membership changes
    /// take effect on the streams before anything published after them arrives.
    func deliverUserEvent(user: String, _ event: UserRelay) {
        guard let ids = userIndex[user] else { return }
        var targets: [UInt32] = []
        let json: String, except: String
        switch event {
        case let .added(room, lastID, x, j):
            json = j
            except = x
            for id in ids {
                streams[id]?.membershipVersion += 1
                join(id, room: room, lastID: lastID)
            }
        case let .removed(room, x, j):
            json = j
            except = x
            for id in ids where streams[id] != nil {
                streams[id]!.membershipVersion += 1
                if streams[id]!.machine.left(room: room) { releaseRoom(id, room: room) }
            }
        case let .frame(x, j):
            json = j
            except = x
        case let .deviceRemoved(device):
            for id in ids { streams[id]?.mailbox.unbind(device) }
            return
        case let .toDevice(device, inboxID, j):
            let payload = ByteBuffer(string: j)
            for id in ids where streams[id] != nil {
                if streams[id]!.mailbox.live(device: device, id: inboxID, payload: payload) == .send { targets.append(id) }
            }
            if !targets.isEmpty { write(.deliver(payload: payload, streams: targets)) }
            flushIfNeeded()
            return
        }
        let payload = ByteBuffer(string: json)
        for id in ids {
            guard let s = streams[id], s.info.id != except else { continue }
            if streams[id]!.machine.event(payload) == .send { targets.append(id) }
        }
        if !targets.isEmpty { write(.deliver(payload: payload, streams: targets)) }
        flushIfNeeded()
    }

    /// The stream's user is in `room` now: index it there, hold the subscription, and replay what
    /// this worker relayed of the room past `lastID` before the stream was indexed.
    private func join(_ id: UInt32, room: String, lastID: MessageID) {
        guard streams[id] != nil, streams[id]!.machine.joined(room: room, lastID: lastID) else { return }
        let relayed = retainRoom(id, room: room, start: lastID)
        if relayed > lastID { replay(since: lastID, room: room, stream: id, fromClient: false) }
    }

    /// The requester's own membership change, applied to all of the user's streams here
    /// before its answer is written (see `Reply`).
    func applyOwnChange(_ change: Reply.Change, user: String) {
        guard let ids = userIndex[user] else { return }
        for id in ids {
            switch change {
            case let .joined(room, lastID): join(id, room: room, lastID: lastID)
            case let .left(room):
                if streams[id]?.machine.left(room: room) == true { releaseRoom(id, room: room) }
            }
        }
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

    func write(_ frame: LinkFrame) {
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

/// A stream that ended while something waited for it.
struct StreamGone: Error {}
