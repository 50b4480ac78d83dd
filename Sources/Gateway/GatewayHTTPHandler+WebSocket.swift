import ChatCore
import NIOCore
import NIOHTTP1
import NIOPosix
import Proto

extension GatewayHTTPHandler {
    /// Headers a client may not send to a worker: the gateway sets them itself.
    static func isInternalHeader(_ name: String) -> Bool {
        let n = name.lowercased()
        return n.hasPrefix("x-securechat-") || n == "x-forwarded-for" || n == "x-real-ip" || n == "forwarded"
    }

    /// `GET /ws`: checks Origin and session, asks the coordinator for a live worker,
    /// connects (trying another worker if one cannot be reached), forwards the
    /// upgrade request and splices both ways. The worker answers the upgrade itself.
    func webSocket(_ context: ChannelHandlerContext, _ head: HTTPRequestHead) {
        if let origin = head.headers.first(name: "origin"), !ctx.isAllowedOrigin(origin, host: head.headers.first(name: "host")) {
            ctx.logger.info("websocket refused: foreign origin")
            respondJSON(context, .forbidden, ["ok": false, "error": "forbidden_origin"], close: true)
            return
        }
        guard head.headers["upgrade"].contains(where: { $0.lowercased() == "websocket" }) else {
            respondJSON(context, .badRequest, ["ok": false, "error": "bad_request"], close: true)
            return
        }
        withSession(context, head, closeOnFailure: true) { h, context, user in
            if user == nil {
                h.respondJSON(context, .unauthorized, ["ok": false, "error": "unauthenticated"], close: true)
            } else {
                h.connectWorker(context, head, excluding: [], attemptsLeft: 3)
            }
        }
    }

    private func connectWorker(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, excluding: [String], attemptsLeft: Int) {
        let coordinator = ctx.coordinator
        let loop = context.eventLoop
        let directory = ctx.directory
        let routed = loop.makePromise(of: CoordinatorResponse.self)
        routed.completeWithTask {
            do {
                return try await coordinator.call(.route(exclude: excluding))
            } catch {
                // Coordinator away: route on the last list it gave us.
                guard let w = directory.fallback(excluding: excluding) else { throw error }
                return .route(worker: w.id, address: w.address)
            }
        }
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        routed.futureResult.whenComplete { result in
            let (h, context) = bound.value
            guard attemptsLeft > 0, case let .success(.route(worker, address)) = result,
                  let endpoint = try? Endpoint(parsing: address) else {
                h.ctx.logger.warning("no worker could take a stream")
                h.respondJSON(context, .serviceUnavailable, ["ok": false, "error": "unavailable"], close: true)
                return
            }
            let (clientGlue, workerGlue) = GlueHandler.matchedPair()
            let workerGlueBound = NIOLoopBound(workerGlue, eventLoop: loop)
            // Same event loop on both sides: the glue handlers call each other directly.
            let bootstrap = ClientBootstrap(group: loop)
                .connectTimeout(.seconds(2))
                .channelOption(.autoRead, value: true)
                .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator.chatStream)
                .channelInitializer { ch in
                    ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(workerGlueBound.value) }
                }
            let connecting = bootstrap.connect(to: endpoint)
            let glueBound = NIOLoopBound(clientGlue, eventLoop: loop)
            connecting.whenComplete { result in
                let (h, context) = bound.value
                switch result {
                case let .success(workerChannel):
                    h.splice(context, head, to: workerChannel, glue: glueBound.value, worker: worker)
                case .failure:
                    h.ctx.logger.warning("worker unreachable; trying another", metadata: ["worker.id": "\(worker)"])
                    h.connectWorker(context, head, excluding: excluding + [worker], attemptsLeft: attemptsLeft - 1)
                }
            }
        }
    }

    private func splice(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, to workerChannel: Channel, glue: GlueHandler, worker: String) {
        guard context.channel.isActive else {
            workerChannel.close(promise: nil)
            return
        }
        var request = "GET \(head.uri) HTTP/1.1\r\n"
        for (name, value) in head.headers where !Self.isInternalHeader(name) {
            request += "\(name): \(value)\r\n"
        }
        let address = context.channel.remoteAddress?.ipAddress ?? "unknown"
        request += "X-Forwarded-For: \(address)\r\n\r\n"
        workerChannel.writeAndFlush(ByteBuffer(string: request), promise: nil)

        markHandingOff()
        ctx.connections.markSpliced(context.channel)
        let pipeline = context.pipeline.syncOperations
        do {
            try pipeline.addHandler(glue)
            // Everything that speaks HTTP goes; the decoder last, so bytes it still holds
            // (anything the client sent after the request) pass on to the glue.
            for handler in httpHandlers.dropLast() { pipeline.removeHandler(handler, promise: nil) }
            pipeline.removeHandler(self, promise: nil)
            if let decoder = httpHandlers.last { pipeline.removeHandler(decoder, promise: nil) }
            ctx.logger.debug("stream handed off", metadata: ["worker.id": "\(worker)"])
        } catch {
            workerChannel.close(promise: nil)
            context.close(promise: nil)
        }
    }
}
