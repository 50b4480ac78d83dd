import ChatCore
import Logging
import NIOCore
import NIOWebSocket
import Proto

/// Shared services a connection needs.
struct WorkerContext: Sendable {
    let workerID: String
    let hub: Hub
    let store: MessageStore
    let limiter: RateLimiterClient
    let coordinator: CoordinatorLink
    let logger: Logger
    let maxQueuedFrames: Int
    let pingInterval: TimeAmount
    let sessions: SessionStore
}

/// One client's WebSocket after the upgrade: validates every frame, runs them
/// in order, and keeps live delivery in id order around `welcome` and `sync`.
final class ChatConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let ctx: WorkerContext
    let info: ConnectionInfo
    let sessionHash: String
    /// When the session's absolute lifetime ends: the socket closes with 4001 then.
    let sessionEndsAtMs: Int64
    /// When this socket last kept its session from expiring for idleness.
    private var sessionTouched = NIODeadline.now()
    private var logger: Logger
    private var context: ChannelHandlerContext?

    /// While > 0 (before `welcome`, during a `sync` replay) live messages wait here.
    private var holdLive = 1
    private var held: [SharedFrame] = []
    /// `welcome` is the first frame: events before it wait here.
    private var welcomed = false
    private var beforeWelcome: [String] = []
    /// The greatest message id sent on this connection.
    private var lastSent = MessageID.zero
    /// Frames waiting for the socket to become writable; bounded by `maxQueuedFrames`.
    private var outgoing = CircularBuffer<WebSocketFrame>()
    private var lastInbound = NIODeadline.now()
    private var pingTask: RepeatedTask?
    private var closing = false
    private var fragments: ByteBuffer?
    private var continuation: AsyncStream<[UInt8]>.Continuation?
    /// Frames received but not yet processed; past a bound the socket stops being read
    /// (TCP backpressure on the client) until the task catches up.
    private var pendingFrames = 0
    private static let pendingHigh = 64, pendingLow = 16

    init(ctx: WorkerContext, info: ConnectionInfo, sessionHash: String, sessionEndsAtMs: Int64) {
        self.ctx = ctx
        self.info = info
        self.sessionHash = sessionHash
        self.sessionEndsAtMs = sessionEndsAtMs
        var logger = ctx.logger
        logger[metadataKey: "connection.id"] = "\(info.id)"
        logger[metadataKey: "user"] = "\(info.user)"
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        keepalive(context: context)
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        ctx.hub.add(Hub.Entry(info: info, sessionHash: sessionHash, handler: loopBound, eventLoop: context.eventLoop))
        let (stream, continuation) = AsyncStream.makeStream(of: [UInt8].self, bufferingPolicy: .unbounded)
        self.continuation = continuation
        let ctx = self.ctx, info = self.info, eventLoop = context.eventLoop
        logger.debug("connection opened")
        // One task per connection runs its frames strictly in order.
        Task {
            await Self.welcome(ctx: ctx, info: info, handler: loopBound, eventLoop: eventLoop)
            for await bytes in stream {
                await Self.process(bytes, ctx: ctx, info: info, handler: loopBound, eventLoop: eventLoop)
                Self.onLoop(loopBound, eventLoop) { $0.frameDone() }
            }
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        pingTask?.cancel()
        continuation?.finish()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        pingTask?.cancel()
        outgoing.removeAll()
        continuation?.finish()
        ctx.hub.remove(info.id, eventLoop: context.eventLoop)
        let ctx = self.ctx, info = self.info
        logger.debug("connection closed")
        Task { _ = try? await ctx.coordinator.call(.connectionClosed(worker: ctx.workerID, connection: info)) }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        lastInbound = .now()
        guard !closing else { return }
        // Client frames must be masked, and no extension was negotiated that could set RSV bits.
        if frame.maskKey == nil || frame.rsv1 || frame.rsv2 || frame.rsv3 {
            closeWith(code: 1002)
            return
        }
        switch frame.opcode {
        case .text:
            if frame.fin {
                if fragments != nil { closeWith(code: 1002); return }
                received(frame.unmaskedData)
            } else {
                if fragments != nil { closeWith(code: 1002); return }
                fragments = frame.unmaskedData
            }
        case .continuation:
            guard var buffer = fragments else { closeWith(code: 1002); return }
            var data = frame.unmaskedData
            guard buffer.readableBytes + data.readableBytes <= ChatLimits.maxFrameBytes else {
                closeWith(code: 1009)
                return
            }
            buffer.writeBuffer(&data)
            if frame.fin {
                fragments = nil
                received(buffer)
            } else {
                fragments = buffer
            }
        case .binary:
            sendJSON(ServerFrame.error(code: "bad_request", message: "binary frames are not supported", ref: nil, retryAfterMs: nil).json)
        case .ping:
            var data = frame.unmaskedData
            guard data.readableBytes <= 125 else { closeWith(code: 1002); return }
            let pong = WebSocketFrame(fin: true, opcode: .pong, data: data.readSlice(length: data.readableBytes)!)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .pong:
            break
        case .connectionClose:
            closeWith(code: 1000)
        default:
            closeWith(code: 1002)
        }
    }

    private func received(_ buffer: ByteBuffer) {
        guard String(validating: buffer.readableBytesView, as: UTF8.self) != nil else {
            closeWith(code: 1007)
            return
        }
        pendingFrames += 1
        if pendingFrames == Self.pendingHigh { context?.channel.setOption(.autoRead, value: false).whenFailure { _ in } }
        continuation?.yield(Array(buffer.readableBytesView))
    }

    fileprivate func frameDone() {
        pendingFrames -= 1
        if pendingFrames == Self.pendingLow, let channel = context?.channel {
            channel.setOption(.autoRead, value: true).whenFailure { _ in }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.debug("connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    // MARK: sending (on the event loop)

    func sendJSON(_ json: String) {
        send(ByteBuffer(string: json))
    }

    /// An event (presence) for this client: after `welcome`, never before.
    func sendEvent(_ json: String) {
        guard welcomed else {
            if beforeWelcome.count < ctx.maxQueuedFrames { beforeWelcome.append(json) }
            return
        }
        sendJSON(json)
    }

    /// Writes now while the socket keeps up; otherwise queues, up to the bound.
    /// A client that lets the queue overflow is closed with 4008: what it has not
    /// read is dropped, and it reconnects and `sync`s.
    private func send(_ bytes: ByteBuffer) {
        send(WebSocketFrame(fin: true, opcode: .text, data: bytes))
    }

    private func send(_ frame: WebSocketFrame) {
        guard let context, !closing else { return }
        if outgoing.isEmpty && context.channel.isWritable {
            context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
            return
        }
        guard outgoing.count < ctx.maxQueuedFrames else {
            logger.info("client too slow; closing", metadata: ["queued": "\(outgoing.count)"])
            outgoing.removeAll()
            closeWith(code: 4008)
            return
        }
        outgoing.append(frame)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        guard !closing else { return }
        var wrote = false
        while context.channel.isWritable, let frame = outgoing.popFirst() {
            context.write(wrapOutboundOut(frame), promise: nil)
            wrote = true
        }
        if wrote { context.flush() }
        context.fireChannelWritabilityChanged()
    }

    /// Keepalive: a ping every interval; a peer silent for two intervals is gone (half-open) and is closed.
    private func keepalive(context: ChannelHandlerContext) {
        let interval = ctx.pingInterval
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        pingTask = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            let h = loopBound.value
            guard let context = h.context, !h.closing else { return }
            if NIODeadline.now() - h.lastInbound > interval * 2 {
                h.logger.info("no answer to pings; closing")
                context.close(promise: nil)
                return
            }
            h.checkSession(loopBound, eventLoop: context.eventLoop)
            var data = context.channel.allocator.buffer(capacity: 8)
            data.writeInteger(UInt64(NIODeadline.now().uptimeNanoseconds))
            context.writeAndFlush(h.wrapOutboundOut(WebSocketFrame(fin: true, opcode: .ping, data: data)), promise: nil)
        }
    }

    /// An open socket is activity: it keeps its session from expiring for idleness (refreshed
    /// every half idle period, checked at each ping), but never past the session's absolute end,
    /// when the socket closes with 4001 like a logout. A session gone from Redis closes it too.
    private func checkSession(_ loopBound: NIOLoopBound<ChatConnectionHandler>, eventLoop: EventLoop) {
        guard SessionStore.nowMs() < sessionEndsAtMs else {
            logger.info("session reached its absolute lifetime; closing")
            closeWith(code: 4001)
            return
        }
        let now = NIODeadline.now()
        guard now - sessionTouched >= .milliseconds(Int64(ctx.sessions.idleSeconds) * 500) else { return }
        sessionTouched = now
        let sessions = ctx.sessions, hash = sessionHash, endsAt = sessionEndsAtMs
        Task {
            guard let alive = try? await sessions.keepAlive(hash: hash, endsAtMs: endsAt), !alive else { return }
            Self.onLoop(loopBound, eventLoop) { h in
                h.logger.info("session ended; closing")
                h.closeWith(code: 4001)
            }
        }
    }

    func deliverLive(_ frame: SharedFrame) {
        if holdLive > 0 {
            guard held.count < ctx.maxQueuedFrames else {
                closeWith(code: 4008)
                return
            }
            held.append(frame)
            return
        }
        sendMessage(frame)
    }

    private func sendMessage(_ frame: SharedFrame) {
        guard frame.message.id > lastSent else { return }
        lastSent = frame.message.id
        send(frame.frame)
    }

    /// Pauses live delivery (before a replay).
    func hold() { holdLive += 1 }

    /// Resumes live delivery, sending what waited that is newer than what was replayed.
    func release() {
        holdLive -= 1
        guard holdLive == 0 else { return }
        let waiting = held
        held = []
        for f in waiting { sendMessage(f) }
    }

    /// Replays stored messages in order, even those older than what live delivery sent.
    func sendReplayed(_ messages: [ChatMessage]) {
        for m in messages {
            send(ByteBuffer(string: m.json))
            lastSent = max(lastSent, m.id)
        }
    }

    func closeWith(code: UInt16) {
        guard let context, !closing else { return }
        closing = true
        var data = context.channel.allocator.buffer(capacity: 2)
        data.write(webSocketErrorCode: WebSocketErrorCode(codeNumber: Int(code)))
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, data: data)
        context.writeAndFlush(wrapOutboundOut(frame)).whenComplete { _ in context.close(promise: nil) }
        // Do not wait forever for a peer that no longer reads; a slow one gets time to read its 4008.
        let channel = context.channel
        context.eventLoop.scheduleTask(in: code == 4008 ? .seconds(10) : .seconds(2)) { channel.close(promise: nil) }
    }
}

extension ChatConnectionHandler {
    static func onLoop(_ handler: NIOLoopBound<ChatConnectionHandler>, _ eventLoop: EventLoop,
                       _ body: @escaping @Sendable (ChatConnectionHandler) -> Void) {
        eventLoop.execute { body(handler.value) }
    }

    static func welcome(ctx: WorkerContext, info: ConnectionInfo, handler: NIOLoopBound<ChatConnectionHandler>, eventLoop: EventLoop) async {
        var online: [String]
        if case let .opened(list)? = try? await ctx.coordinator.call(.connectionOpened(worker: ctx.workerID, connection: info)) {
            online = list
        } else {
            online = ctx.hub.bestKnownOnline
        }
        if !online.contains(info.user) { online.append(info.user) }
        let history = (try? await ctx.store.recent(room: ChatLimits.lobby)) ?? []
        let onlineCount = online.count
        let json = ServerFrame.welcome(user: info.user, room: ChatLimits.lobby, online: online.sorted(), history: history).json
        onLoop(handler, eventLoop) { h in
            h.sendJSON(json)
            h.logger.debug("welcome sent", metadata: ["online": "\(onlineCount)", "history": "\(history.count)"])
            h.welcomed = true
            let events = h.beforeWelcome
            h.beforeWelcome = []
            for e in events { h.sendJSON(e) }
            if let last = history.last { h.lastSent = max(h.lastSent, last.id) }
            h.release()
        }
    }

    static func process(_ bytes: [UInt8], ctx: WorkerContext, info: ConnectionInfo,
                        handler: NIOLoopBound<ChatConnectionHandler>, eventLoop: EventLoop) async {
        func reply(_ frame: ServerFrame) {
            let json = frame.json
            onLoop(handler, eventLoop) { $0.sendJSON(json) }
        }
        switch ClientFrame.decode(bytes) {
        case let .failure(error):
            reply(.error(code: error.code.rawValue, message: error.message, ref: error.ref, retryAfterMs: nil))
        case let .success(.send(body, ref, room)):
            let decision = await ctx.limiter.check(.message, key: info.user)
            if !decision.allowed, let ref, let id = try? await ctx.store.storedID(user: info.user, ref: ref) {
                // A retry of a stored message is answered, not limited: the client only lost its ack.
                reply(.ack(ref: ref, id: id))
                return
            }
            guard decision.allowed else {
                reply(.error(code: "rate_limited", message: "sending too fast", ref: ref,
                             retryAfterMs: max(1, Int((decision.retryAfter * 1000).rounded(.up)))))
                return
            }
            do {
                let (id, _) = try await ctx.store.append(room: room, from: info.user, text: body, ref: ref)
                reply(.ack(ref: ref, id: id))
            } catch {
                ctx.logger.warning("message not stored", metadata: ["error": "\(error)", "user": "\(info.user)"])
                reply(.error(code: "unavailable", message: "temporarily unavailable; retry with the same ref", ref: ref, retryAfterMs: 1000))
            }
        case let .success(.sync(since, room)):
            onLoop(handler, eventLoop) { $0.hold() }
            do {
                let recovered = try await ctx.store.since(since, room: room) { page in
                    onLoop(handler, eventLoop) { $0.sendReplayed(page) }
                }
                reply(.synced(room: room, recovered: recovered))
            } catch {
                reply(.error(code: "unavailable", message: "history temporarily unavailable", ref: nil, retryAfterMs: 1000))
            }
            onLoop(handler, eventLoop) { $0.release() }
        }
    }
}
