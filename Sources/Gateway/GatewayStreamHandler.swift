import ChatCore
import Logging
import NIOCore
import NIOWebSocket
import Proto

/// How the gateway treats each client's WebSocket.
struct StreamLimits: Sendable {
    /// Frames waiting for a client that does not read; past either bound it gets 4008.
    var maxQueuedFrames: Int
    var maxQueuedBytes: Int
    /// A ping every interval; a client silent for two is gone (half-open) and is closed.
    var pingInterval: TimeAmount
}

/// Server-to-client WebSocket frames as bytes. Server frames are not masked, so a frame
/// for many clients is the same bytes for each: the gateway frames a delivery once and
/// every client's TLS handler gets the same buffer (one write, one TLS record per client).
enum WebSocketWire {
    static func frame(opcode: WebSocketOpcode, payload: ByteBuffer, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        let n = payload.readableBytes
        var out = allocator.buffer(capacity: n + 10)
        out.writeInteger(UInt8(0x80) | UInt8(webSocketOpcode: opcode))
        if n < 126 {
            out.writeInteger(UInt8(n))
        } else if n <= Int(UInt16.max) {
            out.writeInteger(UInt8(126))
            out.writeInteger(UInt16(n))
        } else {
            out.writeInteger(UInt8(127))
            out.writeInteger(UInt64(n))
        }
        out.writeImmutableBuffer(payload)
        return out
    }

    static func text(_ payload: ByteBuffer) -> ByteBuffer { frame(opcode: .text, payload: payload) }

    static func close(code: UInt16) -> ByteBuffer {
        var data = ByteBuffer()
        data.writeInteger(code)
        return frame(opcode: .connectionClose, payload: data)
    }
}

/// The WebSocket keepalive of every client stream of one event loop: one repeated task
/// pings them all each interval (a task per connection was a timer and a closure per idle
/// client). A stream's own clock decides when it is due, so one that joined just before a
/// tick is pinged at the next one after its interval.
final class StreamKeepalive {
    private let interval: TimeAmount
    private var streams: [ObjectIdentifier: (stream: GatewayStreamHandler, since: NIODeadline)] = [:]
    private var task: RepeatedTask?

    init(interval: TimeAmount) {
        self.interval = interval
    }

    func add(_ s: GatewayStreamHandler) {
        streams[ObjectIdentifier(s)] = (s, .now())
    }

    func remove(_ s: GatewayStreamHandler) {
        streams.removeValue(forKey: ObjectIdentifier(s))
    }

    /// Starts the loop's timer (once, on `loop`); ticks at a tenth of the interval so that each
    /// stream is pinged within 10 % of its own interval.
    func start(on loop: EventLoop) {
        guard task == nil else { return }
        let bound = NIOLoopBound(self, eventLoop: loop)
        let tick = TimeAmount.nanoseconds(max(interval.nanoseconds / 10, 10_000_000))
        task = loop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { _ in bound.value.tick() }
    }

    private func tick() {
        let now = NIODeadline.now()
        for key in Array(streams.keys) {
            guard let entry = streams[key], now - entry.since >= interval else { continue }
            streams[key]?.since = now
            entry.stream.ping(interval: interval, now: now)
        }
    }
}

/// One client's WebSocket, after the upgrade: framing rules (masking, RSV bits,
/// fragments, UTF-8, sizes), pings, the bounded outgoing queue; every complete text
/// message goes to the worker as it is. It never interprets chat frames. Outgoing frames
/// are bytes already framed (`WebSocketWire`), usually shared with the other clients.
final class GatewayStreamHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = ByteBuffer

    private let limits: StreamLimits
    /// Shared, never given per-stream metadata: a Logger with its own metadata is a heap box
    /// and a dictionary per idle connection. Log calls name the worker themselves.
    private let logger: Logger
    private var workerID = ""
    private var context: ChannelHandlerContext?
    private var link: GatewayLinkHandler?
    private var streamID: UInt32 = 0
    /// Empty nearly always: start it small (NIO's default reserves 16 slots per connection).
    private var outgoing = CircularBuffer<ByteBuffer>(initialCapacity: 1)
    private var outgoingBytes = 0
    private var needsFlush = false
    private var lastInbound = NIODeadline.now()
    private var keepalive: StreamKeepalive?
    private var closing = false
    private var fragments: ByteBuffer?
    /// Counted in `securechat_client_streams_open` (once, until it ends).
    private var counted = false

    private func uncount() {
        guard counted else { return }
        counted = false
        Telemetry.clientStreams.decrement()
    }

    init(limits: StreamLimits, logger: Logger) {
        self.limits = limits
        self.logger = logger
    }

    /// Attaches the stream to its worker link (on this event loop); false if the link cannot take it.
    func attach(to link: GatewayLinkHandler, user: String, sessionHash: String, address: String) -> Bool {
        guard let id = link.open(self, user: user, sessionHash: sessionHash, address: address) else { return false }
        if !counted {
            counted = true
            Telemetry.clientStreams.increment()
        }
        self.link = link
        self.streamID = id
        workerID = link.workerID
        return true
    }

    /// Pings come from one timer per event loop (`StreamKeepalive`), not one per connection.
    func startKeepalive(_ k: StreamKeepalive) {
        keepalive = k
        k.add(self)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // A pause recorded at attach time (the link was not writable) takes effect now.
        if workerPaused || linkPaused { updateReading() }
    }

    /// The upgrade could not install the handler: undo the attach.
    func detach() {
        uncount()
        keepalive?.remove(self)
        link?.clientClosed(streamID)
        link = nil
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        keepalive?.remove(self)
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        uncount()
        keepalive?.remove(self)
        outgoing.removeAll()
        outgoingBytes = 0
        pending = nil
        link?.clientClosed(streamID)
        link = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // What NIOWebSocket's decoder refuses: too large is 1009, anything else 1002.
        if let ws = error as? NIOWebSocketError {
            closeWith(code: ws == .invalidFrameLength ? 1009 : 1002)
            return
        }
        logger.debug("client stream error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
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
            if fragments != nil { closeWith(code: 1002); return }
            if frame.fin { received(frame.unmaskedData) } else { fragments = frame.unmaskedData }
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
            let error = ServerFrame.error(code: "bad_request", message: "binary frames are not supported", ref: nil, retryAfterMs: nil)
            sendFramed(WebSocketWire.text(ByteBuffer(string: error.json)))
            flushIfNeeded()
        case .ping:
            var data = frame.unmaskedData
            guard data.readableBytes <= 125 else { closeWith(code: 1002); return }
            let pong = WebSocketWire.frame(opcode: .pong, payload: data.readSlice(length: data.readableBytes)!, allocator: context.channel.allocator)
            guard context.channel.isWritable else {
                // A client that pings and does not read: at most one pong waits, the answer to
                // its latest ping (RFC 6455 5.5.3 allows answering only the most recent one).
                pendingPong = pong
                return
            }
            writePending(context)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .pong:
            break
        case .connectionClose:
            closeWith(code: 1000)
        default:
            closeWith(code: 1002)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        link?.flushIfNeeded()
        context.fireChannelReadComplete()
    }

    private func received(_ buffer: ByteBuffer) {
        guard String(validating: buffer.readableBytesView, as: UTF8.self) != nil else {
            closeWith(code: 1007)
            return
        }
        link?.clientText(streamID, buffer)
    }

    // MARK: from the worker (on this event loop)

    /// Queues one framed message for the client. While the socket keeps up, the frames of one
    /// flush are gathered into one buffer (the first one is the shared bytes, not a copy), so a
    /// flush is one `SSL_write`, one TLS record and one system call per client however many
    /// messages it carries. The caller flushes once per read burst, or later when writes are
    /// coalesced (`FlushCoalescer`). A client that lets the queue overflow (in frames or
    /// bytes) is closed with 4008: it reconnects and `sync`s.
    func sendFramed(_ frame: ByteBuffer) {
        guard let context, !closing else { return }
        Telemetry.deliveries.increment()
        Telemetry.deliveredBytes.increment(by: frame.readableBytes)
        if outgoing.isEmpty && context.channel.isWritable {
            gather(frame, context: context)
            needsFlush = true
            return
        }
        guard outgoing.count < limits.maxQueuedFrames, outgoingBytes + frame.readableBytes <= limits.maxQueuedBytes else {
            Telemetry.slowClientCloses.increment()
            logger.info("client too slow; closing", metadata: ["queued": "\(outgoing.count)", "queued.bytes": "\(outgoingBytes)", "worker.id": "\(workerID)"])
            outgoing.removeAll()
            outgoingBytes = 0
            pending = nil
            closeWith(code: 4008)
            return
        }
        outgoing.append(frame)
        outgoingBytes += frame.readableBytes
    }

    /// The worker waits to hear that this client's queue is short (a replay's next page).
    private var roomAsked = false

    /// The worker asks to be told when the queue is short: now, or once it drains.
    func askRoom() {
        if outgoingBytes <= limits.maxQueuedBytes / 8 {
            link?.streamRoom(streamID)
        } else {
            roomAsked = true
        }
    }

    /// The answer to the latest ping while the socket was not writable.
    private var pendingPong: ByteBuffer?
    /// Frames gathered for the next flush; `pendingOwned` once it is our own copy.
    private var pending: ByteBuffer?
    private var pendingOwned = false
    /// Past this a gathered buffer is handed on (TLS records are 16 KiB at most anyway).
    static let maxGatheredBytes = 64 * 1024

    private func gather(_ frame: ByteBuffer, context: ChannelHandlerContext) {
        guard var p = pending else {
            pending = frame
            pendingOwned = false
            return
        }
        if p.readableBytes + frame.readableBytes > Self.maxGatheredBytes {
            context.write(wrapOutboundOut(p), promise: nil)
            pending = frame
            pendingOwned = false
            return
        }
        pending = nil
        if !pendingOwned {
            var copy = context.channel.allocator.buffer(capacity: max(4096, p.readableBytes + frame.readableBytes))
            copy.writeBuffer(&p)
            p = copy
            pendingOwned = true
        }
        p.writeImmutableBuffer(frame)
        pending = p
    }

    /// Hands what was gathered to the TLS handler, ahead of any frame written directly.
    private func writePending(_ context: ChannelHandlerContext) {
        guard let p = pending else { return }
        pending = nil
        context.write(wrapOutboundOut(p), promise: nil)
    }

    func flushIfNeeded() {
        guard needsFlush, let context else { return }
        needsFlush = false
        writePending(context)
        context.flush()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if !closing {
            var wrote = false
            if pending != nil { writePending(context); wrote = true }
            if context.channel.isWritable, let pong = pendingPong {
                pendingPong = nil
                context.write(wrapOutboundOut(pong), promise: nil)
                wrote = true
            }
            while context.channel.isWritable, let frame = outgoing.popFirst() {
                outgoingBytes -= frame.readableBytes
                context.write(wrapOutboundOut(frame), promise: nil)
                wrote = true
            }
            if wrote { context.flush() }
            if roomAsked && outgoingBytes <= limits.maxQueuedBytes / 8 {
                roomAsked = false
                link?.streamRoom(streamID)
            }
        }
        context.fireChannelWritabilityChanged()
    }

    private var workerPaused = false
    private var linkPaused = false

    /// The worker asks to stop (or resume) reading this client: its frames queue up there.
    func setInputEnabled(_ enabled: Bool) {
        workerPaused = !enabled
        updateReading()
    }

    /// The link to the worker is not (or again) writable: stop reading the client meanwhile,
    /// so a saturated worker slows senders down by TCP backpressure instead of queueing.
    func setLinkWritable(_ writable: Bool) {
        linkPaused = !writable
        updateReading()
    }

    private func updateReading() {
        let reading = !workerPaused && !linkPaused
        if reading { lastInbound = .now() }
        context?.channel.setOption(.autoRead, value: reading).whenFailure { _ in }
    }

    /// The worker ended the stream, or its link went away.
    func linkClosed(code: UInt16) {
        link = nil
        // What the worker sent before its close goes first, queued frames included
        // (the close's own timer bounds how long a client that does not read gets).
        if let context, !closing {
            writePending(context)
            while let frame = outgoing.popFirst() { context.write(wrapOutboundOut(frame), promise: nil) }
            outgoingBytes = 0
            needsFlush = true
        }
        flushIfNeeded()
        closeWith(code: code)
    }

    /// Called by the loop's keepalive timer every ping interval.
    func ping(interval: TimeAmount, now: NIODeadline) {
        guard let context, !closing else { return }
        // While we do not read the client (its worker asked us to wait), its pongs wait unread.
        if !workerPaused && !linkPaused && now - lastInbound > interval * 2 {
            logger.info("no answer to pings; closing", metadata: ["worker.id": "\(workerID)"])
            context.close(promise: nil)
            return
        }
        var data = context.channel.allocator.buffer(capacity: 8)
        data.writeInteger(UInt64(now.uptimeNanoseconds))
        writePending(context)
        context.writeAndFlush(wrapOutboundOut(WebSocketWire.frame(opcode: .ping, payload: data, allocator: context.channel.allocator)), promise: nil)
    }

    func closeWith(code: UInt16) {
        guard let context, !closing else { return }
        closing = true
        link?.clientClosed(streamID)
        link = nil
        writePending(context)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(WebSocketWire.close(code: code))).whenComplete { _ in channel.close(promise: nil) }
        // Do not wait forever for a peer that no longer reads; a slow one gets time to read its 4008.
        context.eventLoop.scheduleTask(in: code == 4008 ? .seconds(10) : .seconds(2)) { channel.close(promise: nil) }
    }
}
