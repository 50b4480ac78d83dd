import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket

/// Where the load goes: only loopback, ever.
struct Target: Sendable {
    let host: String
    let port: Int
    let tls: NIOSSLContext

    init(url: String, caFile: String?) throws {
        guard let u = URL(string: url), u.scheme == "https", let host = u.host else { throw BenchError("--url must be https://HOST:PORT") }
        guard host == "127.0.0.1" || host == "localhost" || host == "::1" || host.hasPrefix("127.") else {
            throw BenchError("refusing to load \(host): the generator only targets loopback")
        }
        self.host = host
        self.port = u.port ?? 443
        var config = TLSConfiguration.makeClientConfiguration()
        if let caFile {
            config.trustRoots = .file(caFile)
        } else {
            config.certificateVerification = .none
        }
        tls = try NIOSSLContext(configuration: config)
    }

    var origin: String { "https://\(host):\(port)" }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Collects one HTTP response (head and body) for a single request.
final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    let promise: EventLoopPromise<(HTTPResponseHead, String)>
    var head: HTTPResponseHead?
    var body = ""

    init(promise: EventLoopPromise<(HTTPResponseHead, String)>) {
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case let .head(h): head = h
        case let .body(b): body += String(buffer: b)
        case .end:
            if let head { promise.succeed((head, body)) }
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(BenchError("connection closed"))
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        promise.fail(error)
        context.close(promise: nil)
    }
}

enum HTTPS {
    /// POST /api/login; returns the session cookie.
    static func login(_ target: Target, group: EventLoopGroup, user: String, password: String) async throws -> String {
        let loop = group.next()
        let promise = loop.makePromise(of: (HTTPResponseHead, String).self)
        let channel = try await ClientBootstrap(group: loop)
            .connectTimeout(.seconds(10))
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    let sync = ch.pipeline.syncOperations
                    try sync.addHandler(NIOSSLClientHandler(context: target.tls, serverHostname: nil))
                    try sync.addHTTPClientHandlers()
                    try sync.addHandler(ResponseCollector(promise: promise))
                }
            }
            .connect(host: target.host, port: target.port).get()
        let body = "{\"username\":\"\(user)\",\"password\":\"\(password)\"}"
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: "\(target.host):\(target.port)")
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        headers.add(name: "Connection", value: "close")
        channel.write(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/api/login", headers: headers)), promise: nil)
        channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(string: body))), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        let (head, _) = try await promise.futureResult.get()
        guard head.status == .ok, let cookie = head.headers["set-cookie"].first,
              let value = cookie.split(separator: ";").first?.split(separator: "=", maxSplits: 1).last else {
            throw BenchError("login of \(user) failed: \(head.status.code)")
        }
        return String(value)
    }
}

/// Shared counters and latency histograms of one run.
final class Stats: Sendable {
    struct State {
        var latency = LatencyHistogram()
        var delivered = 0
        var sent = 0
        var acked = 0
        var errors = 0
        var closed = 0
        var pongs = LatencyHistogram()
    }

    let state = NIOLockedValueBox(State())

    func reset() {
        state.withLockedValue { $0 = State() }
    }
}

/// A log-linear latency histogram in microseconds (HdrHistogram underneath).
struct LatencyHistogram: Sendable {
    private var values: [UInt64] = []
    private var h = HistogramBox()

    mutating func record(_ micros: UInt64) { h.record(micros) }
    mutating func merge(_ other: LatencyHistogram) { h.merge(other.h) }
    var count: UInt64 { h.count }
    func percentile(_ p: Double) -> Double { Double(h.percentile(p)) / 1000 }  // milliseconds
}

/// The client side of one WebSocket: counts deliveries and their end-to-end latency.
final class BenchSocket: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let stats: Stats
    let welcomed: EventLoopPromise<Void>
    private var gotWelcome = false
    /// Per-connection counts and raw samples, folded into the shared histograms in batches
    /// (a histogram per connection would cost ~100 KiB each and a full merge per flush).
    private var local = Local()
    private struct Local {
        var latencies: [UInt64] = []
        var pongs: [UInt64] = []
        var delivered = 0, sent = 0, acked = 0, errors = 0, closed = 0
        var isEmpty: Bool { latencies.isEmpty && pongs.isEmpty && delivered == 0 && sent == 0 && acked == 0 && errors == 0 && closed == 0 }
    }
    private var context: ChannelHandlerContext?
    private var fragments: ByteBuffer?
    private var seq = 0
    private var pingSent: UInt64 = 0

    init(stats: Stats, welcomed: EventLoopPromise<Void>) {
        self.stats = stats
        self.welcomed = welcomed
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // Counters are folded into the shared ones every 250 ms, not per frame.
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.eventLoop.scheduleRepeatedTask(initialDelay: .milliseconds(250), delay: .milliseconds(250)) { task in
            let h = bound.value
            h.flushStats()
            if h.context == nil { task.cancel() }
        }
    }

    func flushStats() {
        guard !local.isEmpty else { return }
        let l = local
        local = Local()
        stats.state.withLockedValue { s in
            for v in l.latencies { s.latency.record(v) }
            for v in l.pongs { s.pongs.record(v) }
            s.delivered += l.delivered
            s.sent += l.sent
            s.acked += l.acked
            s.errors += l.errors
            s.closed += l.closed
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text:
            var data = frame.unmaskedData
            if !frame.fin { fragments = data; return }
            handleText(&data)
        case .continuation:
            var d = frame.unmaskedData
            fragments?.writeBuffer(&d)
            if frame.fin, var whole = fragments {
                fragments = nil
                handleText(&whole)
            }
        case .ping:
            var d = frame.unmaskedData
            let pong = WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: d.readSlice(length: d.readableBytes)!)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .pong:
            if pingSent > 0 {
                local.pongs.append((DispatchTime.now().uptimeNanoseconds - pingSent) / 1000)
                pingSent = 0
            }
        case .connectionClose:
            context.close(promise: nil)
        default:
            break
        }
    }

    /// The stamp of a `text` ("text":"b …) or of an `e2ee` object's "ct":"b …, found in one scan.
    private static let marker = Array("\":\"b ".utf8)
    private static let ackMarker = Array("{\"type\":\"ack\"".utf8)

    private func handleText(_ buffer: inout ByteBuffer) {
        let now = DispatchTime.now().uptimeNanoseconds
        let view = buffer.readableBytesView
        if !gotWelcome {
            gotWelcome = true
            welcomed.succeed(())
            return
        }
        if view.starts(with: Self.ackMarker) {
            local.acked += 1
            return
        }
        // Latency: the text starts with "b <send time in ns> ".
        guard let start = view.firstRange(of: Self.marker) else {
            if view.starts(with: Array("{\"type\":\"error\"".utf8)) { local.errors += 1 }
            return
        }
        var i = start.upperBound
        var sentAt: UInt64 = 0
        while i < view.endIndex, view[i] >= 0x30, view[i] <= 0x39 {
            sentAt = sentAt * 10 + UInt64(view[i] - 0x30)
            i += 1
        }
        local.delivered += 1
        if now > sentAt { local.latencies.append((now - sentAt) / 1000) }
    }

    /// Sends one chat message stamped with the current time.
    func sendMessage(padding: Int, room: String? = nil, encrypted: Bool = false) {
        guard let context else { return }
        seq += 1
        let text = "b \(DispatchTime.now().uptimeNanoseconds) \(seq)" + String(repeating: "x", count: padding)
        let json: String
        if encrypted, let room {
            // An opaque object as a browser would send it: the stamp stands in for the ciphertext.
            json = "{\"type\":\"send\",\"room\":\"\(room)\",\"e2ee\":{\"v\":1,\"ct\":\"\(text)\"}}"
        } else {
            json = room.map { "{\"type\":\"send\",\"room\":\"\($0)\",\"text\":\"\(text)\"}" } ?? "{\"type\":\"send\",\"text\":\"\(text)\"}"
        }
        let frame = WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: ByteBuffer(string: json))
        context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
        local.sent += 1
    }

    func sendPing() {
        guard let context, pingSent == 0 else { return }
        pingSent = DispatchTime.now().uptimeNanoseconds
        let frame = WebSocketFrame(fin: true, opcode: .ping, maskKey: .random(), data: ByteBuffer(string: "hb"))
        context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        local.closed += 1
        flushStats()
        self.context = nil
        if !gotWelcome { welcomed.fail(BenchError("closed before welcome")) }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// Opens authenticated WebSocket connections.
struct Connector: Sendable {
    let target: Target
    let group: EventLoopGroup
    let stats: Stats
    let path: String

    struct Connection: Sendable {
        let channel: Channel
        let socket: NIOLoopBound<BenchSocket>
        /// The room this connection sends to (nil: the lobby), and whether it is end-to-end encrypted.
        var room: String? = nil
        var encrypted = false

        func send(padding: Int) {
            let s = socket, room = self.room, encrypted = self.encrypted
            channel.eventLoop.execute { s.value.sendMessage(padding: padding, room: room, encrypted: encrypted) }
        }

        func ping() {
            let s = socket
            channel.eventLoop.execute { s.value.sendPing() }
        }
    }

    func connect(cookie: String) async throws -> Connection {
        let loop = group.next()
        let welcomed = loop.makePromise(of: Void.self)
        let upgraded = loop.makePromise(of: NIOLoopBound<BenchSocket>.self)
        let target = self.target, stats = self.stats
        let channel = try await ClientBootstrap(group: loop)
            .connectTimeout(.seconds(20))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    let upgrader = NIOWebSocketClientUpgrader(maxFrameSize: 1 << 20, automaticErrorHandling: true) { ch, _ in
                        ch.eventLoop.makeCompletedFuture {
                            let socket = BenchSocket(stats: stats, welcomed: welcomed)
                            try ch.pipeline.syncOperations.addHandler(socket)
                            upgraded.succeed(NIOLoopBound(socket, eventLoop: ch.eventLoop))
                        }
                    }
                    let sync = ch.pipeline.syncOperations
                    try sync.addHandler(NIOSSLClientHandler(context: target.tls, serverHostname: nil))
                    try sync.addHTTPClientHandlers(leftOverBytesStrategy: .forwardBytes,
                                                   withClientUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
                }
            }
            .connect(host: target.host, port: target.port).get()
        channel.closeFuture.whenComplete { _ in
            upgraded.fail(BenchError("upgrade refused"))
            welcomed.fail(BenchError("closed"))
        }
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: "\(target.host):\(target.port)")
        headers.add(name: "Origin", value: target.origin)
        headers.add(name: "Cookie", value: "__Host-sc_session=\(cookie)")
        headers.add(name: "Content-Length", value: "0")
        channel.write(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers)), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        // A stream that is not upgraded and welcomed in time counts as failed.
        let timeout = loop.scheduleTask(in: .seconds(15)) { channel.close(promise: nil) }
        defer { timeout.cancel() }
        let socket: NIOLoopBound<BenchSocket>
        do { socket = try await upgraded.futureResult.get() } catch { throw BenchError("no upgrade: \(error)") }
        do { try await welcomed.futureResult.get() } catch { throw BenchError("no welcome: \(error)") }
        return Connection(channel: channel, socket: socket)
    }
}
