import ChatCore
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOTLS
import Proto

/// One client's HTTP/1.1 requests: pages, assets, the JSON API, and the
/// WebSocket upgrade of `/ws`, after which it removes the HTTP handlers and the
/// connection is a stream on this event loop's link to a worker.
final class GatewayHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let ctx: GatewayContext
    /// The HTTP handlers to remove at the hand-off, in order.
    let httpHandlers: [RemovableChannelHandler]
    private var head: HTTPRequestHead?
    private var body: ByteBuffer?
    private var tooLarge = false
    private var bodyLimit = 16 * 1024
    /// Bytes of this connection's upload counted in the gateway's uploads in flight.
    var uploadReserved = 0 {
        didSet { if oldValue > 0 { ctx.uploads.release(oldValue) } }
    }
    private var handingOff = false
    /// The request being answered is a HEAD: its answer has the headers of a GET and no body.
    private var answeringHead = false

    let deadline: RequestDeadlineHandler

    /// The client's address: its peer, or what a PROXY protocol header named.
    let origin: ClientOrigin

    init(ctx: GatewayContext, deadline: RequestDeadlineHandler, origin: ClientOrigin, httpHandlers: [RemovableChannelHandler]) {
        self.ctx = ctx
        self.origin = origin
        self.deadline = deadline
        self.httpHandlers = httpHandlers
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case let .head(h):
            head = h
            body = nil
            tooLarge = false
            answeringHead = false
            uploadReserved = 0
            // A file upload may be up to --max-file-bytes; every other body 16 KiB.
            let isUpload = h.method == .POST && h.uri.split(separator: "?", maxSplits: 1).first == "/api/files"
            bodyLimit = isUpload ? ctx.fileLimits.maxBytes : ctx.maxBodyBytes
            let length = h.headers["content-length"].first.flatMap { Int($0) }
            if isUpload, let refusal = uploadRefusal(h, length: length) {
                // Said up front, before a byte of the body is kept: what is refused is not read.
                tooLarge = true
                self.head = nil
                deadline.requestComplete()
                respondJSON(context, refusal.0, ["ok": false, "error": refusal.1], close: true)
                return
            }
            if let length, length > bodyLimit {
                tooLarge = true
                self.head = nil
                deadline.requestComplete()
                respondJSON(context, .payloadTooLarge, ["ok": false, "error": "too_large"], close: true)
            } else if isUpload, let length {
                // At least 64 KiB/s for an upload's body, whatever --request-timeout-seconds says.
                deadline.allow(.milliseconds(Int64(10_000 + length / 64)))
            }
        case var .body(chunk):
            guard !tooLarge else { return }
            if (body?.readableBytes ?? 0) + chunk.readableBytes > bodyLimit {
                tooLarge = true
                body = nil
                return
            }
            if body == nil { body = chunk } else { body!.writeBuffer(&chunk) }
        case .end:
            deadline.requestComplete()
            guard let head else { return }
            self.head = nil
            if tooLarge {
                respondJSON(context, .payloadTooLarge, ["ok": false, "error": "too_large"], close: true)
                return
            }
            let request = body ?? ByteBuffer()
            body = nil   // not kept past the request (an idle keep-alive connection holds nothing)
            route(context, head, request)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        uploadReserved = 0
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if error is NIOSSLError || error is BoringSSLError { Telemetry.tlsHandshakes("failed").increment() }
        context.close(promise: nil)
    }

    func markHandingOff() { handingOff = true }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let tls = event as? TLSUserEvent, case .handshakeCompleted = tls { Telemetry.tlsHandshakes("ok").increment() }
        // Idle connections and slow senders (slowloris) are reclaimed.
        if event is IdleStateHandler.IdleStateEvent, !handingOff {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: routing

    private func route(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ body: ByteBuffer) {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        let method = head.method
        // One request at a time per connection (the pipeline holds the next until this one's end).
        answeringHead = method == .HEAD
        switch (method, path) {
        case (.GET, "/"), (.HEAD, "/"):
            withSession(context, head) { h, context, user in
                if user != nil { h.redirect(context, to: "/chat") } else { h.servePage(context, "login.html") }
            }
        case (.GET, "/chat"), (.HEAD, "/chat"):
            withSession(context, head) { h, context, user in
                if user != nil { h.servePage(context, "chat.html") } else { h.redirect(context, to: "/") }
            }
        case (.GET, _) where path.hasPrefix("/static/"), (.HEAD, _) where path.hasPrefix("/static/"):
            if let file = ctx.files.file(named: path.dropFirst("/static/".count)) {
                respond(context, .ok, contentType: file.contentType, body: file.body, cache: "public, max-age=300")
            } else {
                respondJSON(context, .notFound, ["ok": false, "error": "not_found"])
            }
        case (.POST, "/api/login"):
            login(context, head, body)
        case (.POST, "/api/logout"):
            logout(context, head)
        case (.GET, "/api/me"):
            withSession(context, head) { h, context, user in
                if let user {
                    h.respondJSON(context, .ok, ["username": user])
                } else {
                    h.respondJSON(context, .unauthorized, ["ok": false, "error": "unauthenticated"])
                }
            }
        case (.GET, "/healthz"):
            health(context)
        case (.POST, "/api/files"):
            uploadFile(context, head, body)
        case (.GET, _) where path.hasPrefix("/api/files/"):
            downloadFile(context, head, id: path.dropFirst("/api/files/".count))
        case (.GET, "/ws"):
            webSocket(context, head)
        case (_, "/"), (_, "/chat"), (_, "/api/login"), (_, "/api/logout"), (_, "/api/me"), (_, "/healthz"), (_, "/ws"), (_, "/api/files"):
            respondJSON(context, .methodNotAllowed, ["ok": false, "error": "method_not_allowed"])
        default:
            respondJSON(context, .notFound, ["ok": false, "error": "not_found"])
        }
    }

    static func sessionID(_ head: HTTPRequestHead) -> String? {
        SessionStore.sessionID(fromCookieHeaders: head.headers["cookie"])
    }

    /// Runs `body` on the event loop with the session's user (nil without a valid session); 503 when Redis is down.
    func withSession(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, closeOnFailure: Bool = false,
                     _ body: @escaping (GatewayHTTPHandler, ChannelHandlerContext, String?) -> Void) {
        guard let sid = Self.sessionID(head) else {
            body(self, context, nil)
            return
        }
        let bound = NIOLoopBound((self, context, body), eventLoop: context.eventLoop)
        ctx.sessions.lookup(sid, on: context.eventLoop).map { $0?.user }.whenComplete { result in
            let (h, context, body) = bound.value
            switch result {
            case let .success(user): body(h, context, user)
            case .failure: h.respondJSON(context, .serviceUnavailable, ["ok": false, "error": "unavailable"], close: closeOnFailure)
            }
        }
    }

    func originAllowed(_ head: HTTPRequestHead) -> Bool {
        guard let origin = head.headers.first(name: "origin") else { return true }
        return ctx.isAllowedOrigin(origin, host: head.headers.first(name: "host"))
    }

    // MARK: login / logout

    private func login(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ body: ByteBuffer) {
        let type = head.headers.first(name: "content-type")?.lowercased() ?? ""
        guard type == "application/json" || type.hasPrefix("application/json;") else {
            respondJSON(context, .unsupportedMediaType, ["ok": false, "error": "unsupported_media_type"])
            return
        }
        guard originAllowed(head) else {
            respondJSON(context, .forbidden, ["ok": false, "error": "forbidden"])
            return
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any],
              let username = object["username"] as? String, let password = object["password"] as? String,
              (1...64).contains(username.utf8.count), password.utf8.count <= 1024 else {
            respondJSON(context, .badRequest, ["ok": false, "error": "bad_request"])
            return
        }
        let address = ClientAddress.rateKey(origin.address)
        let oldSession = Self.sessionID(head)
        let ctx = self.ctx
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        Self.performLogin(ctx: ctx, username: username, password: password, address: address,
                          oldSession: oldSession, channel: context.channel, loop: loop).whenComplete { result in
            let (h, context) = bound.value
            Telemetry.logins(Self.outcomeName(result)).increment()
            switch result {
            case let .success(.ok(sid)):
                var headers = HTTPHeaders()
                headers.add(name: "Set-Cookie", value: "\(SessionStore.cookieName)=\(sid); Path=/; HttpOnly; Secure; SameSite=Strict")
                h.respondJSON(context, .ok, ["ok": true, "username": username], extra: headers)
            case .success(.invalid):
                h.respondJSON(context, .unauthorized, ["ok": false, "error": "invalid_credentials"])
            case let .success(.limited(seconds)):
                var headers = HTTPHeaders()
                headers.add(name: "Retry-After", value: String(seconds))
                h.respondJSON(context, .tooManyRequests, ["ok": false, "error": "rate_limited", "retry_after": seconds], extra: headers)
            case .success(.abandoned):
                context.close(promise: nil)
            case .success(.busy):
                var headers = HTTPHeaders()
                headers.add(name: "Retry-After", value: "1")
                h.respondJSON(context, .serviceUnavailable, ["ok": false, "error": "busy", "retry_after": 1], extra: headers)
            case .failure:
                h.respondJSON(context, .serviceUnavailable, ["ok": false, "error": "unavailable"])
            }
        }
    }

    static func outcomeName(_ result: Result<LoginOutcome, Error>) -> String {
        switch result {
        case .success(.ok): return "ok"
        case .success(.invalid): return "invalid"
        case .success(.limited): return "limited"
        case .success(.busy): return "busy"
        case .success(.abandoned): return "abandoned"
        case .failure: return "unavailable"
        }
    }

    enum LoginOutcome: Sendable {
        case ok(String)
        case invalid
        case limited(Int)
        /// Too many password checks in flight on this gateway.
        case busy
        /// The client left before its password was checked; nothing was checked.
        case abandoned
    }

    private static func performLogin(ctx: GatewayContext, username: String, password: String, address: String,
                                     oldSession: String?, channel: Channel, loop: EventLoop) -> EventLoopFuture<LoginOutcome> {
        // One atomic take-or-refuse per limit *before* the password is checked, so concurrent
        // guesses cannot all pass a check before any spends. Every failed attempt keeps its
        // cells, known user or not (a 429 says nothing about which accounts exist); a refused
        // attempt gives back what it took, and a successful login gives back all of them.
        // The strict per-name limit counts a name from one address; the per-name limit over
        // all addresses is softer, so a guesser elsewhere cannot keep its owner out.
        let nameKey = username.lowercased()
        let pairKey = nameKey + "|" + address
        let limiter = ctx.limiter
        let taken = [(RateLimitKind.loginUser, pairKey), (.loginName, nameKey), (.loginAddress, address)]
        return EventLoopFuture.whenAllSucceed(taken.map { limiter.check($0.0, key: $0.1, on: loop) }, on: loop)
            .flatMap { decisions -> EventLoopFuture<LoginOutcome> in
                @Sendable func giveBack() {
                    for (i, d) in decisions.enumerated() { limiter.refund(taken[i].0, key: taken[i].1, taken: d) }
                }
                if let refused = decisions.first(where: { !$0.allowed }) {
                    giveBack()
                    let wait = decisions.filter { !$0.allowed }.map(\.retryAfter).max() ?? refused.retryAfter
                    ctx.logger.info("login rate limited", metadata: ["client.address": "\(address)"])
                    return loop.makeSucceededFuture(.limited(max(1, Int(wait.rounded(.up)))))
                }
                // Bounded work: past --max-logins-in-flight the answer is 503 at once, not a queue.
                guard ctx.logins.enter() else {
                    giveBack()
                    ctx.logger.warning("login refused: too many password checks in flight", metadata: ["client.address": "\(address)"])
                    return loop.makeSucceededFuture(.busy)
                }
                let users = ctx.users, logger = ctx.logger, logins = ctx.logins
                let checked = ctx.threadPool.runIfActive(eventLoop: loop) { () -> String?? in
                    // The client left while it waited: no scrypt for nobody.
                    guard channel.isActive else { return nil }
                    return users.verify(user: username, password: password, logger: logger)
                }
                checked.whenComplete { _ in logins.leave() }
                return checked.flatMap { valid -> EventLoopFuture<LoginOutcome> in
                    guard let valid else {
                        // Nobody to answer: the check was skipped (counted as `abandoned`).
                        giveBack()
                        return loop.makeSucceededFuture(.abandoned)
                    }
                    guard let generation = valid else {
                        ctx.logger.info("login failed", metadata: ["client.address": "\(address)"])
                        return loop.makeSucceededFuture(.invalid)
                    }
                    giveBack()
                    // A fresh id at every login; a session the browser brought along is ended, never adopted.
                    let ended = oldSession.map { ctx.sessions.destroy($0, on: loop).map { _ in () }.recover { _ in () } }
                        ?? loop.makeSucceededVoidFuture()
                    return ended.flatMap { ctx.sessions.create(user: username, generation: generation, on: loop) }.map { sid in
                        ctx.logger.info("login", metadata: ["user": "\(username)", "client.address": "\(address)"])
                        return .ok(sid)
                    }
                }
            }
    }

    private func logout(_ context: ChannelHandlerContext, _ head: HTTPRequestHead) {
        guard originAllowed(head) else {
            respondJSON(context, .forbidden, ["ok": false, "error": "forbidden"])
            return
        }
        guard let sid = Self.sessionID(head) else {
            respondJSON(context, .unauthorized, ["ok": false, "error": "unauthenticated"])
            return
        }
        let sessions = ctx.sessions, loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        sessions.lookup(sid, on: loop).flatMap { session -> EventLoopFuture<Bool> in
            guard session != nil else { return loop.makeSucceededFuture(false) }
            return sessions.destroy(sid, on: loop)
        }.whenComplete { result in
            let (h, context) = bound.value
            var headers = HTTPHeaders()
            headers.add(name: "Set-Cookie", value: "\(SessionStore.cookieName)=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
            switch result {
            case .success(true): h.respondJSON(context, .ok, ["ok": true], extra: headers)
            case .success(false): h.respondJSON(context, .unauthorized, ["ok": false, "error": "unauthenticated"], extra: headers)
            case .failure: h.respondJSON(context, .serviceUnavailable, ["ok": false, "error": "unavailable"])
            }
        }
    }

    // MARK: health

    private func health(_ context: ChannelHandlerContext) {
        let loop = context.eventLoop
        let redisOK = ctx.redis.sendChecked(["PING"], on: loop).map { $0.string == "PONG" }.recover { _ in false }
        let status = ctx.coordinator.callFuture(.status).hop(to: loop).map { response -> (Bool, Int) in
            if case let .status(w, _) = response { return (true, w) }
            return (false, 0)
        }.recover { _ in (false, 0) }
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        redisOK.and(status).whenSuccess { redisOK, status in
            let (coordinatorOK, workers) = status
            let (h, context) = bound.value
            let ok = redisOK && coordinatorOK && workers > 0
            var down: [String] = []
            if !redisOK { down.append("redis") }
            if !coordinatorOK { down.append("coordinator") }
            if workers == 0 { down.append("workers") }
            var answer: [String: Any] = ["status": ok ? "ok" : "degraded", "redis": redisOK, "coordinator": coordinatorOK,
                                         "workers": workers, "down": down, "workers_cached": h.ctx.directory.count]
            if !h.ctx.users.demoAccounts.isEmpty { answer["demo_users"] = true }
            h.respondJSON(context, ok ? .ok : .serviceUnavailable, answer)
        }
    }

    // MARK: responses

    /// The page may run only the scripts it loads from here (each pinned by Subresource
    /// Integrity in the HTML, scripts/sri), never inline or injected code, and no DOM sink
    /// that parses strings into markup or script (Trusted Types with no policy). Images may
    /// be blob: URLs: previews of files decrypted in the page.
    static func securityHeaders(_ headers: inout HTTPHeaders) {
        headers.add(name: "Content-Security-Policy",
                    value: "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types 'none'")
        headers.add(name: "X-Content-Type-Options", value: "nosniff")
        headers.add(name: "Strict-Transport-Security", value: "max-age=31536000; includeSubDomains")
        headers.add(name: "Referrer-Policy", value: "no-referrer")
        headers.add(name: "X-Frame-Options", value: "DENY")
        headers.add(name: "Cross-Origin-Opener-Policy", value: "same-origin")
        headers.add(name: "Cross-Origin-Resource-Policy", value: "same-origin")
    }

    func respond(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, contentType: String, body: ByteBuffer,
                 extra: HTTPHeaders = [:], cache: String = "no-store", close: Bool = false) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        headers.add(name: "Cache-Control", value: cache)
        Self.securityHeaders(&headers)
        headers.add(contentsOf: extra)
        if close { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        if !answeringHead { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        let channel = context.channel
        if close { done.whenComplete { _ in channel.close(promise: nil) } }
    }

    func respondJSON(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, _ object: [String: Any],
                     extra: HTTPHeaders = [:], close: Bool = false) {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        respond(context, status, contentType: "application/json", body: ByteBuffer(bytes: data), extra: extra, close: close)
    }

    func servePage(_ context: ChannelHandlerContext, _ name: String) {
        guard let file = ctx.files.page(name) else {
            respondJSON(context, .notFound, ["ok": false, "error": "not_found"])
            return
        }
        respond(context, .ok, contentType: file.contentType, body: file.body)
    }

    func redirect(_ context: ChannelHandlerContext, to location: String) {
        var headers = HTTPHeaders()
        headers.add(name: "Location", value: location)
        respond(context, .found, contentType: "text/plain; charset=utf-8", body: ByteBuffer(), extra: headers)
    }
}
