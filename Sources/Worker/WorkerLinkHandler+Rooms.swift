import ChatCore
import NIOCore
import Proto

/// The client frames of rooms and of the message lifecycle. Each is one Lua script (the
/// rules and the events it causes in one atomic step) and one reply carrying the frame's ref.
extension WorkerLinkHandler {
    /// How a request is charged: history events to the message limit, everything else about
    /// rooms (changes, queries, read markers, typing) to the request limit.
    private enum Charge { case message, request, none }

    func roomFrame(_ frame: ClientFrame, stream id: UInt32, info: ConnectionInfo) {
        guard let (bound, loop) = loopBound else { return }
        let ref = frame.ref
        let charge: Charge
        switch frame {
        case .send, .edit, .delete, .react: charge = .message
        case .createRoom, .join, .leave, .invite, .remove, .setRoom, .openDM, .rooms, .directory, .members, .history, .read, .typing:
            charge = .request
        case .sync, .device, .deviceRemove, .keys, .toDevice, .toDeviceAck, .backupPut, .backupGet: charge = .none
        }
        let check: EventLoopFuture<GCRA.Decision?>
        switch charge {
        case .message: check = ctx.limiter.check(.message, key: info.user, on: loop).map { $0 }
        case .request: check = ctx.limiter.check(.request, key: info.user, on: loop).map { $0 }
        case .none: check = loop.makeSucceededFuture(nil)
        }
        let ctx = self.ctx
        check.flatMap { decision -> EventLoopFuture<Reply> in
            if let decision, !decision.allowed {
                Telemetry.rateLimited(charge == .message ? "message" : "request").increment()
                let limited = ServerFrame.error(code: "rate_limited", message: "too many requests", ref: ref,
                                                retryAfterMs: max(1, Int((decision.retryAfter * 1000).rounded(.up))))
                // A retry of a stored message is answered, not limited: the client only lost its ack.
                // (Not when acks wait for replicas: the retry comes back once allowed, and the
                // store step confirms it then.)
                if case .send = frame, let ref, ctx.rooms.waitReplicas == 0 {
                    return ctx.rooms.storedID(user: info.user, ref: ref, on: loop)
                        .map { stored in Reply(frame: stored.map { ServerFrame.ack(ref: ref, id: $0) } ?? limited) }
                        .flatMapErrorThrowing { _ in Reply(frame: limited) }
                }
                return loop.makeSucceededFuture(Reply(frame: limited))
            }
            // A held message is tried again only while its stream is open (not after a logout,
            // a disconnect or a drain; the client sends it again with the same ref).
            let open: @Sendable () -> Bool = { bound.value.streams[id] != nil }
            return Self.perform(frame, ctx: ctx, info: info, open: open, on: loop)
        }.flatMapErrorThrowing { error in
            ctx.logger.warning("request failed", metadata: ["error": "\(error)", "user": "\(info.user)"])
            // Same code and advice either way; the message says which, for users and operators.
            let message = (error as? RedisError) == .notReplicated
                ? "not yet confirmed by a replica; retry" : "temporarily unavailable; retry"
            return Reply(frame: .error(code: "unavailable", message: message, ref: ref, retryAfterMs: 1000))
        }.whenSuccess { reply in
            let h = bound.value
            if let change = reply.change { h.applyOwnChange(change, user: info.user) }
            if let frame = reply.frame { h.reply(id, frame) }
            h.done(id)
        }
    }

    /// A request's answer, and the change of the requester's own membership it made: applied to
    /// the user's streams on this link before the answer is written, so that once `leave` is
    /// answered nothing more of the room reaches them, and a `sync` right after `join` is served
    /// (the user channel's event, later, then changes nothing).
    struct Reply: Sendable {
        enum Change: Sendable { case joined(room: String, lastID: MessageID), left(room: String) }
        var frame: ServerFrame?
        var change: Change?
    }

    private static func refused(_ r: Refusal, ref: String?) -> ServerFrame {
        .error(code: r.code, message: r.message, ref: ref, retryAfterMs: nil)
    }

    /// The reply to one request, nil for none (an accepted `typing`).
    private static func perform(_ frame: ClientFrame, ctx: WorkerContext, info: ConnectionInfo, open: @escaping @Sendable () -> Bool,
                                on loop: EventLoop) -> EventLoopFuture<Reply> {
        let rooms = ctx.rooms, user = info.user, conn = info.id, limits = rooms.limits
        switch frame {
        case let .createRoom(name, kind, title, topic, encrypted, ref):
            let args = [user, name, kind.rawValue, title ?? "", topic ?? "", encrypted ? "1" : "0",
                        String(limits.roomsPerUser), String(limits.creationsPerHour), String(SessionStore.nowMs()), conn]
            return rooms.run(RoomStore.createScript, args, on: loop).map { joinedReply($0, room: name, ref: ref) }
        case let .join(room, ref):
            return rooms.run(RoomStore.joinScript, [user, room, String(limits.roomsPerUser), conn], on: loop)
                .map { joinedReply($0, room: room, ref: ref) }
        case let .openDM(other, ref) where other != user:
            let dm = RoomID.dm(user, other)
            return rooms.run(RoomStore.openDMScript, [user, other, String(limits.roomsPerUser), conn, dm], on: loop)
                .map { joinedReply($0, room: dm, ref: ref) }
        case let .leave(room, ref):
            return rooms.run(RoomStore.leaveScript, [user, room, conn], on: loop).map { outcome in
                switch outcome {
                case let .refused(code, message): return Reply(frame: .error(code: code, message: message, ref: ref, retryAfterMs: nil))
                case .ok:
                    return Reply(frame: .object(type: "room_removed", ref: ref, fields: "\"room\":\(JSONText.string(room)),\"reason\":\"left\""),
                                 change: .left(room: room))
                }
            }
        default:
            return answer(frame, ctx: ctx, info: info, open: open, on: loop).map { Reply(frame: $0) }
        }
    }

    static func monotonicMs() -> Int { Int(NIODeadline.now().uptimeNanoseconds / 1_000_000) }

    /// Runs `attempt`, and again while `hold` says a failure may pass (a Redis failover) and
    /// `open` still holds. The stream's next frame waits meanwhile: its messages keep their
    /// order. "No replica confirmed it in time" is answered at once: that try already waited
    /// (`WAIT`), and WAITs queue behind each other on the one connection kept for them.
    static func held<T: Sendable>(_ hold: StoreHold, on loop: EventLoop, while open: @escaping @Sendable () -> Bool,
                                  _ attempt: @escaping @Sendable () -> EventLoopFuture<T>) -> EventLoopFuture<T> {
        attempt().flatMapError { error in
            var next = hold
            let transient = (error as? RedisError).map { $0.isTransient && $0 != .notReplicated } ?? false
            let wanted = transient && open()
            switch next.failed(transient: wanted, nowMs: monotonicMs()) {
            case .answer:
                if wanted, hold.holdMs > 0 { Telemetry.storeHoldsExpired.increment() }
                return loop.makeFailedFuture(error)
            case let .again(afterMs):
                Telemetry.storeRetries.increment()
                let then = next
                return loop.scheduleTask(in: .milliseconds(Int64(afterMs))) {}.futureResult.flatMap {
                    held(then, on: loop, while: open, attempt)
                }
            }
        }
    }

    /// A read, held through a Redis failover from now: repeating one is always safe, so it
    /// needs no ref.
    static func heldRead<T: Sendable>(holdMs: Int, on loop: EventLoop, while open: @escaping @Sendable () -> Bool,
                                      _ attempt: @escaping @Sendable () -> EventLoopFuture<T>) -> EventLoopFuture<T> {
        held(.read(holdMs: holdMs, startedMs: monotonicMs()), on: loop, while: open, attempt)
    }

    /// A `room_added` answer with the change it makes; the script answered {ok, room json, last id}.
    private static func joinedReply(_ outcome: RoomStore.Outcome, room: String, ref: String?) -> Reply {
        switch outcome {
        case let .refused(code, message): return Reply(frame: .error(code: code, message: message, ref: ref, retryAfterMs: nil))
        case let .ok(items):
            let json = items.count > 1 ? items[1].string ?? "null" : "null"
            let last = items.count > 2 ? items[2].string.flatMap(MessageID.init) ?? .zero : .zero
            return Reply(frame: .object(type: "room_added", ref: ref, fields: "\"room\":" + json), change: .joined(room: room, lastID: last))
        }
    }

    private static func answer(_ frame: ClientFrame, ctx: WorkerContext, info: ConnectionInfo, open: @escaping @Sendable () -> Bool,
                               on loop: EventLoop) -> EventLoopFuture<ServerFrame?> {
        let rooms = ctx.rooms, user = info.user, conn = info.id
        let limits = rooms.limits, admin = rooms.isAdmin(user) ? "1" : "0"
        /// `read`: the script only reads, so it is held through a Redis failover (repeating it is safe).
        func script(_ s: RedisScript, _ args: [String], ref: String?, read: Bool = false,
                    _ ok: @escaping @Sendable ([RESPValue]) -> ServerFrame?) -> EventLoopFuture<ServerFrame?> {
            let outcome = read ? Self.heldRead(holdMs: rooms.holdMs, on: loop, while: open) { rooms.run(s, args, on: loop) }
                : rooms.run(s, args, on: loop)
            return outcome.map { outcome in
                switch outcome {
                case let .refused(code, message): return .error(code: code, message: message, ref: ref, retryAfterMs: nil)
                case let .ok(items): return ok(items)
                }
            }
        }
        func append(room: String, kind: String, body: String, target: MessageID?, encrypted: Bool?, replyTo: MessageID?, ref: String?) -> EventLoopFuture<ServerFrame?> {
            // An empty ref is no ref to the store step: it would not be deduplicated.
            let hold = StoreHold(holdMs: rooms.holdMs, startedMs: Self.monotonicMs(), hasRef: !(ref ?? "").isEmpty)
            return Self.held(hold, on: loop, while: open) {
                rooms.appendDurably(room: room, user: user, kind: kind, body: body, target: target, encrypted: encrypted,
                                    replyTo: replyTo, ref: ref, on: loop)
            }.map { result in
                switch result {
                case let .success((id, new)):
                    if new { Telemetry.messagesStored.increment() }
                    return ServerFrame.ack(ref: ref, id: id)
                case let .failure(r): return refused(r, ref: ref)
                }
            }
        }

        switch frame {
        case let .send(content, ref, room, replyTo):
            var body = content.fragment
            if let replyTo { body += ",\"reply_to\":\"\(replyTo)\"" }
            return append(room: room, kind: "text", body: body, target: nil, encrypted: content.isEncrypted, replyTo: replyTo, ref: ref)
        case let .edit(room, target, content, ref):
            return append(room: room, kind: "edit", body: "\"kind\":\"edit\",\"target\":\"\(target)\"," + content.fragment,
                          target: target, encrypted: content.isEncrypted, replyTo: nil, ref: ref)
        case let .delete(room, target, ref):
            return append(room: room, kind: "delete", body: "\"kind\":\"delete\",\"target\":\"\(target)\"",
                          target: target, encrypted: nil, replyTo: nil, ref: ref)
        case let .react(room, target, emoji, on, ref):
            return append(room: room, kind: "reaction",
                          body: "\"kind\":\"reaction\",\"target\":\"\(target)\",\"emoji\":\(JSONText.string(emoji)),\"on\":\(on)",
                          target: target, encrypted: nil, replyTo: nil, ref: ref)
        case let .invite(room, target, ref):
            return script(RoomStore.inviteScript, [user, room, target, String(limits.roomsPerUser), String(limits.privateMembers)], ref: ref) { _ in
                .ok(ref: ref)
            }
        case let .remove(room, target, ref):
            return script(RoomStore.removeScript, [user, room, target, admin], ref: ref) { _ in .ok(ref: ref) }
        case let .setRoom(room, title, topic, ref):
            let args = [user, room, admin, title == nil ? "0" : "1", title ?? "", topic == nil ? "0" : "1", topic ?? ""]
            return script(RoomStore.setRoomScript, args, ref: ref) { items in
                .object(type: "room_updated", ref: ref, fields: "\"room\":" + (items.count > 1 ? items[1].string ?? "null" : "null"))
            }
        case let .openDM(_, ref):
            return loop.makeSucceededFuture(.error(code: "bad_request", message: "a direct message needs another user", ref: ref, retryAfterMs: nil))
        case .createRoom, .join, .leave, .device, .deviceRemove, .keys, .toDevice, .toDeviceAck, .backupPut, .backupGet:
            return loop.makeSucceededFuture(nil)
        case let .rooms(ref):
            return Self.heldRead(holdMs: rooms.holdMs, on: loop, while: open) { rooms.rooms(user: user, on: loop) }
                .map { .object(type: "rooms", ref: ref, fields: "\"rooms\":" + $0.json) }
        case let .directory(query, ref):
            return script(RoomStore.directoryScript, [user, query], ref: ref, read: true) { items in
                .object(type: "directory", ref: ref, fields: "\"rooms\":" + (items.count > 1 ? items[1].string ?? "[]" : "[]"))
            }
        case let .members(room, ref):
            let hub = ctx.hub
            return script(RoomStore.membersScript, [user, room, admin], ref: ref, read: true) { items in
                let online = hub.onlineSet
                var out = "\"room\":\(JSONText.string(room)),\"members\":["
                for (i, name) in items.dropFirst().compactMap(\.string).enumerated() {
                    if i > 0 { out += "," }
                    out += "{\"user\":\(JSONText.string(name)),\"online\":\(online.contains(name))}"
                }
                return .object(type: "members", ref: ref, fields: out + "]")
            }
        case let .history(room, before, limit, ref):
            let start = before.map { "(\($0)" } ?? "+"
            return script(RoomStore.historyScript, [user, room, start, String(limit + 1)], ref: ref, read: true) { items in
                let newestFirst = items.count > 1 ? RoomStore.messages(from: items[1], room: room) : []
                let page = newestFirst.prefix(limit).reversed()
                let messages = page.map(\.json).joined(separator: ",")
                return .object(type: "history", ref: ref,
                               fields: "\"room\":\(JSONText.string(room)),\"messages\":[\(messages)],\"more\":\(newestFirst.count > limit)")
            }
        case let .read(room, readID, ref):
            return script(RoomStore.readScript, [user, room, readID.description, conn], ref: ref) { _ in .ok(ref: ref) }
        case let .typing(room, ref):
            return script(RoomStore.typingScript, [user, room], ref: ref) { _ in nil }
        case .sync:
            return loop.makeSucceededFuture(nil)
        }
    }
}
