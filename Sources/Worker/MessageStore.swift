import ChatCore
import NIOCore
import Proto

/// Room history and relay in Redis: one capped stream per room, one pub/sub
/// channel per room, and the idempotency records of client refs.
struct MessageStore: Sendable {
    let redis: RedisClient
    let streamMax: Int
    let historyCount: Int
    let refTTLSeconds = 180

    static func streamKey(_ room: String) -> String { "sc:room:\(room):stream" }
    static func trimmedKey(_ room: String) -> String { "sc:room:\(room):trimmed" }
    static func channel(_ room: String) -> String { "sc:room:\(room)" }
    static func refKey(user: String, ref: String) -> String { "sc:ref:\(user):\(ref)" }

    /// Dedupe by ref, remember what trimming drops, XADD, PUBLISH: one atomic step.
    /// The message time is the stream id's millisecond part (Redis' clock), so ts and id agree.
    static let appendScript = RedisScript("""
    if KEYS[1] ~= '' then
      local prev = redis.call('GET', KEYS[1])
      if prev then return {prev, 0} end
    end
    local maxlen = tonumber(ARGV[3])
    local n = redis.call('XLEN', KEYS[2])
    if n >= maxlen then
      local old = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', n - maxlen + 1)
      if #old > 0 then redis.call('SET', KEYS[4], old[#old][1]) end
    end
    local id = redis.call('XADD', KEYS[2], 'MAXLEN', maxlen, '*', 'from', ARGV[1], 'text', ARGV[2])
    if KEYS[1] ~= '' then redis.call('SET', KEYS[1], id, 'EX', ARGV[4]) end
    local ts = string.match(id, '^(%d+)')
    redis.call('PUBLISH', KEYS[3], id .. '\\n' .. ts .. '\\n' .. ARGV[1] .. '\\n' .. ARGV[2])
    return {id, 1}
    """)

    /// Stores and relays a message; returns its id and whether it was new (false: a retried ref).
    /// These complete on `eventLoop`.
    func append(room: String, from user: String, text: String, ref: String?, on eventLoop: EventLoop) -> EventLoopFuture<(MessageID, Bool)> {
        let keys = [ref.map { Self.refKey(user: user, ref: $0) } ?? "", Self.streamKey(room), Self.channel(room), Self.trimmedKey(room)]
        return redis.evalScriptFuture(Self.appendScript, keys: keys, args: [user, text, String(streamMax), String(refTTLSeconds)], on: eventLoop)
            .flatMapThrowing { reply in
                guard let items = reply.array, items.count == 2, let idText = items[0].string, let id = MessageID(idText) else {
                    throw RedisError.unexpectedReply
                }
                return (id, items[1].int == 1)
            }
    }

    /// The id a ref was stored under, if the user sent it recently.
    func storedID(user: String, ref: String, on eventLoop: EventLoop) -> EventLoopFuture<MessageID?> {
        redis.sendChecked(["GET", Self.refKey(user: user, ref: ref)], on: eventLoop).map { $0.string.flatMap(MessageID.init) }
    }

    /// The room's most recent messages, oldest first.
    func recent(room: String, on eventLoop: EventLoop) -> EventLoopFuture<[ChatMessage]> {
        redis.sendChecked(["XREVRANGE", Self.streamKey(room), "+", "-", "COUNT", String(historyCount)], on: eventLoop)
            .map { Self.messages(from: $0, room: room).reversed() }
    }

    /// Every held message after `since`, in order (`each` runs on `eventLoop` for every page),
    /// and whether nothing before them was trimmed away.
    /// Messages per page of a replay: small enough that one page of the largest messages
    /// (20 × at most 24 KB of JSON) fits a client's queue with room to spare; the next page
    /// waits until the gateway says the queue is short again.
    static let replayPage = 20

    func since(_ since: MessageID, room: String, batch: Int = 500, on eventLoop: EventLoop,
               ready: (@Sendable () -> EventLoopFuture<Void>)? = nil,
               each: @escaping @Sendable ([ChatMessage]) -> Void) -> EventLoopFuture<Bool> {
        let redis = self.redis
        @Sendable func page(after cursor: MessageID, first: Bool) -> EventLoopFuture<Void> {
            // Every page after the first waits until the reader has room (`ready`).
            let go = first ? eventLoop.makeSucceededVoidFuture() : (ready?() ?? eventLoop.makeSucceededVoidFuture())
            return go.flatMap {
                redis.sendChecked(["XRANGE", Self.streamKey(room), "(\(cursor)", "+", "COUNT", String(batch)], on: eventLoop)
            }.flatMap { reply in
                let messages = Self.messages(from: reply, room: room)
                if !messages.isEmpty { each(messages) }
                guard messages.count == batch, let last = messages.last else { return eventLoop.makeSucceededVoidFuture() }
                return page(after: last.id, first: false)
            }
        }
        return page(after: since, first: true).flatMap {
            redis.sendChecked(["GET", Self.trimmedKey(room)], on: eventLoop).map { reply in
                guard let trimmed = reply.string.flatMap(MessageID.init) else { return true }
                return since >= trimmed
            }
        }
    }

    /// The newest id in the room's stream, if any.
    func lastID(room: String) async throws -> MessageID? {
        let reply = try await redis.send(["XREVRANGE", Self.streamKey(room), "+", "-", "COUNT", "1"])
        return Self.messages(from: reply, room: room).first?.id
    }

    static func messages(from reply: RESPValue, room: String) -> [ChatMessage] {
        (reply.array ?? []).compactMap { entry in
            guard let pair = entry.array, pair.count == 2, let idText = pair[0].string, let id = MessageID(idText),
                  let fields = pair[1].array else { return nil }
            var from = "", text = ""
            var i = 0
            while i + 1 < fields.count {
                switch fields[i].string {
                case "from": from = fields[i + 1].string ?? ""
                case "text": text = fields[i + 1].string ?? ""
                default: break
                }
                i += 2
            }
            return ChatMessage(id: id, room: room, from: from, text: text, ts: id.ms)
        }
    }
}
