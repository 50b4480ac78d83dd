import ChatCore
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import Proto
import Foundation

extension GatewayHTTPHandler {
    /// Headers a client may not send to a worker: the gateway sets them itself.
    static func isInternalHeader(_ name: String) -> Bool {
        let n = name.lowercased()
        return n.hasPrefix("x-securechat-") || n == "x-forwarded-for" || n == "x-real-ip" || n == "forwarded"
    }

    /// `GET /ws`: checks Origin and session, asks the coordinator for a live worker, gets
    /// this event loop's link to it (trying another worker if one cannot be reached), then
    /// answers the upgrade itself and opens the client's stream on the link.
    func webSocket(_ context: ChannelHandlerContext, _ head: HTTPRequestHead) {
        if let origin = head.headers.first(name: "origin"), !ctx.isAllowedOrigin(origin, host: head.headers.first(name: "host")) {
            ctx.logger.info("websocket refused: foreign origin")
            respondJSON(context, .forbidden, ["ok": false, "error": "forbidden_origin"], close: true)
            return
        }
        guard head.headers["upgrade"].contains(where: { $0.lowercased() == "websocket" }),
              head.headers["connection"].contains(where: { $0.lowercased().contains("upgrade") }),
              head.headers.first(name: "sec-websocket-version") == "13",
              let key = head.headers.first(name: "sec-websocket-key"),
              Crypto.decodeBase64NoPad(key.replacingOccurrences(of: "=", with: ""))?.count == 16 else {
            respondJSON(context, .badRequest, ["ok": false, "error": "bad_request"], close: true)
            return
        }
        withSession(context, head, closeOnFailure: true) { h, context, user in
            guard let user, let sid = Self.sessionID(head) else {
                h.respondJSON(context, .unauthorized, ["ok": false, "error": "unauthenticated"], close: true)
                return
            }
            h.connectWorker(context, head, user: user, sessionHash: SessionStore.hash(sid), key: key, excluding: [], attemptsLeft: 3)
        }
    }

    private func connectWorker(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, user: String, sessionHash: String,
                               key: String, excluding: [String], attemptsLeft: Int) {
        let coordinator = ctx.coordinator
        let loop = context.eventLoop
        let directory = ctx.directory
        let links = ctx.links
        let routed = coordinator.callFuture(.route(exclude: excluding)).hop(to: loop).flatMapError { error in
            // Coordinator away: route on the last list it gave us.
            guard let w = directory.fallback(excluding: excluding) else { return loop.makeFailedFuture(error) }
            return loop.makeSucceededFuture(CoordinatorResponse.route(worker: w.id, address: w.address))
        }
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        routed.whenComplete { result in
            let (h, context) = bound.value
            guard attemptsLeft > 0, case let .success(.route(worker, address)) = result,
                  let endpoint = try? Endpoint(parsing: address) else {
                h.ctx.logger.warning("no worker could take a stream")
                h.respondJSON(context, .serviceUnavailable, ["ok": false, "error": "unavailable"], close: true)
                return
            }
            links.link(worker: worker, endpoint: endpoint, on: loop).whenComplete { result in
                let (h, context) = bound.value
                switch result {
                case let .success(link):
                    h.upgrade(context, key: key, to: link.value, user: user, sessionHash: sessionHash)
                case .failure:
                    h.ctx.logger.warning("worker unreachable; trying another", metadata: ["worker.id": "\(worker)"])
                    h.connectWorker(context, head, user: user, sessionHash: sessionHash, key: key,
                                    excluding: excluding + [worker], attemptsLeft: attemptsLeft - 1)
                }
            }
        }
    }

    /// The RFC 6455 accept value for a client's key.
    static func acceptValue(for key: String) -> String {
        let digest = Crypto.sha1(Array((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").utf8))
        return Data(digest).base64EncodedString()
    }

    private func upgrade(_ context: ChannelHandlerContext, key: String, to link: GatewayLinkHandler, user: String, sessionHash: String) {
        guard context.channel.isActive else { return }
        let stream = GatewayStreamHandler(limits: ctx.streamLimits, logger: ctx.logger)
        let address = origin.address?.ipAddress ?? "unknown"
        guard stream.attach(to: link, user: user, sessionHash: sessionHash, address: address) else {
            respondJSON(context, .serviceUnavailable, ["ok": false, "error": "unavailable"], close: true)
            return
        }
        if let keepalive = ctx.links.keepalive(on: context.eventLoop) { stream.startKeepalive(keepalive) }
        var headers = HTTPHeaders()
        headers.add(name: "Upgrade", value: "websocket")
        headers.add(name: "Connection", value: "Upgrade")
        headers.add(name: "Sec-WebSocket-Accept", value: Self.acceptValue(for: key))
        // Which worker took the stream: for tests and operators only (ids may name hosts).
        if ctx.exposeWorkerHeader { headers.add(name: "X-SecureChat-Worker", value: link.workerID) }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .switchingProtocols, headers: headers))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)

        markHandingOff()
        ctx.connections.markStream(context.channel)
        let pipeline = context.pipeline.syncOperations
        do {
            // No frame encoder: the stream writes frames it (or its link) already framed.
            try pipeline.addHandlers([
                ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: ChatLimits.maxFrameBytes)),
                stream,
            ])
            // Everything that speaks HTTP goes; the decoder last, so bytes it still holds
            // (anything the client sent after the request) pass on to the WebSocket decoder.
            for handler in httpHandlers.dropLast() { pipeline.removeHandler(handler, promise: nil) }
            pipeline.removeHandler(self, promise: nil)
            if let decoder = httpHandlers.last { pipeline.removeHandler(decoder, promise: nil) }
            ctx.logger.debug("stream opened", metadata: ["worker.id": "\(link.workerID)"])
        } catch {
            stream.detach()
            context.close(promise: nil)
        }
    }
}
