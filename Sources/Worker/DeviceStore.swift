import ChatCore
import NIOCore
import Proto

/// The server's side of end-to-end encryption (protocol.md, "End-to-end encryption"): a
/// directory of each user's devices, a mailbox per device for `to_device` messages, and one
/// key backup per user. Every payload is opaque: stored and relayed as the client sent it.
///
/// - `sc:user:<u>:devices` hash: device id → device object (JSON, at most 4 KiB), at most 10
/// - `sc:user:<u>:dev:<d>:inbox` stream: to_device messages (`from`, `fd`, `p`) until acked,
///   capped at 10,000, expiring 30 days after the last one arrived
/// - `sc:user:<u>:backup` string: the key backup (at most 48 KiB)
/// - channel `sc:devices`: a user whose devices changed (every worker tells its streams)
struct DeviceStore: Sendable {
    let redis: RedisClient
    static let devicesChannel = "sc:devices"
    static let inboxMax = 10_000
    static let inboxTTLms = 30 * 24 * 3600 * 1000

    static func inboxKey(user: String, device: String) -> String { "sc:user:\(user):dev:\(device):inbox" }

    /// ARGV: user, id, json, max devices.
    static let putScript = RedisScript("""
    local k = 'sc:user:' .. ARGV[1] .. ':devices'
    if redis.call('HEXISTS', k, ARGV[2]) == 0 and redis.call('HLEN', k) >= tonumber(ARGV[4]) then
      return {'err', 'limit', 'at most ' .. ARGV[4] .. ' devices per user'}
    end
    -- Announced only when it changed: every connection sends its device again at each reconnect.
    if redis.call('HGET', k, ARGV[2]) == ARGV[3] then return {'ok'} end
    redis.call('HSET', k, ARGV[2], ARGV[3])
    redis.call('PUBLISH', 'sc:devices', ARGV[1])
    return {'ok'}
    """)

    /// ARGV: user, id.
    static let removeScript = RedisScript("""
    local k = 'sc:user:' .. ARGV[1] .. ':devices'
    if redis.call('HDEL', k, ARGV[2]) == 0 then return {'err', 'not_found', 'no such device'} end
    redis.call('DEL', 'sc:user:' .. ARGV[1] .. ':dev:' .. ARGV[2] .. ':inbox')
    redis.call('PUBLISH', 'sc:user:' .. ARGV[1], 'x' .. string.char(10) .. ARGV[2])
    redis.call('PUBLISH', 'sc:devices', ARGV[1])
    return {'ok'}
    """)

    /// ARGV: from user, from device, inbox max, ttl ms, then (user, device, payload) triples.
    /// A message for a device that does not exist is dropped (the sender's key list was stale).
    static let sendScript = RedisScript("""
    local from, fd = ARGV[1], ARGV[2]
    -- From a device that still exists (a removed one bound elsewhere sends nothing more).
    if redis.call('HEXISTS', 'sc:user:' .. from .. ':devices', fd) == 0 then return {'err', 'not_found', 'no such device: send device again'} end
    local stored = 0
    for i = 5, #ARGV, 3 do
      local u, d, p = ARGV[i], ARGV[i + 1], ARGV[i + 2]
      if redis.call('HEXISTS', 'sc:user:' .. u .. ':devices', d) == 1 then
        local k = 'sc:user:' .. u .. ':dev:' .. d .. ':inbox'
        local id = redis.call('XADD', k, 'MAXLEN', '~', ARGV[3], '*', 'from', from, 'fd', fd, 'p', p)
        redis.call('PEXPIRE', k, ARGV[4])
        local frame = '{"type":"to_device","id":"' .. id .. '","from":"' .. from .. '","from_device":"' .. fd .. '","payload":' .. p .. '}'
        redis.call('PUBLISH', 'sc:user:' .. u, 'v' .. string.char(10) .. d .. string.char(10) .. id .. string.char(10) .. frame)
        stored = stored + 1
      end
    end
    return {'ok', stored}
    """)

    /// ARGV: user, users... Each user's device objects.
    static let keysScript = RedisScript("""
    local out = {'ok'}
    for i = 2, #ARGV do
      local devices = redis.call('HVALS', 'sc:user:' .. ARGV[i] .. ':devices')
      table.insert(out, ARGV[i])
      table.insert(out, #devices)
      for _, d in ipairs(devices) do table.insert(out, d) end
    end
    return out
    """)

    func run(_ script: RedisScript, _ args: [String], on loop: EventLoop) -> EventLoopFuture<RoomStore.Outcome> {
        RoomStore.run(script, args, redis: redis, on: loop)
    }

    /// `{"alice":[{…},{…}],"bob":[]}` for the `keys` answer.
    static func keysJSON(_ items: [RESPValue]) -> String {
        var out = "{"
        var i = 1, first = true
        while i + 1 < items.count {
            guard let user = items[i].string, let n = items[i + 1].int else { break }
            if !first { out += "," }
            first = false
            out += JSONText.string(user) + ":["
            let devices = items[(i + 2)..<min(items.count, i + 2 + Int(n))].compactMap(\.string)
            out += devices.joined(separator: ",") + "]"
            i += 2 + Int(n)
        }
        return out + "}"
    }

    /// A page of the device's pending messages after `after`, as `to_device` frames with their ids.
    func pending(user: String, device: String, after: MessageID, count: Int, on loop: EventLoop) -> EventLoopFuture<[(id: MessageID, json: String)]> {
        redis.sendChecked(["XRANGE", Self.inboxKey(user: user, device: device), "(\(after)", "+", "COUNT", String(count)], on: loop).map { reply in
            (reply.array ?? []).compactMap { entry in
                guard let pair = entry.array, pair.count == 2, let id = pair[0].string.flatMap(MessageID.init),
                      let fields = pair[1].array else { return nil }
                var f: [String: String] = [:]
                var i = 0
                while i + 1 < fields.count {
                    if let k = fields[i].string, let v = fields[i + 1].string { f[k] = v }
                    i += 2
                }
                guard let from = f["from"], let fd = f["fd"], let p = f["p"] else { return nil }
                return (id, "{\"type\":\"to_device\",\"id\":\"\(id)\",\"from\":\(JSONText.string(from)),\"from_device\":\(JSONText.string(fd)),\"payload\":\(p)}")
            }
        }
    }

    /// Deletes the device's messages up to `upto`.
    func ack(user: String, device: String, upto: MessageID, on loop: EventLoop) -> EventLoopFuture<Void> {
        let next = upto.seq == .max ? MessageID(ms: upto.ms + 1, seq: 0) : MessageID(ms: upto.ms, seq: upto.seq + 1)
        return redis.sendChecked(["XTRIM", Self.inboxKey(user: user, device: device), "MINID", next.description], on: loop).map { _ in }
    }

    func putBackup(user: String, json: String, on loop: EventLoop) -> EventLoopFuture<Void> {
        redis.sendChecked(["SET", "sc:user:\(user):backup", json], on: loop).map { _ in }
    }

    func backup(user: String, on loop: EventLoop) -> EventLoopFuture<String?> {
        redis.sendChecked(["GET", "sc:user:\(user):backup"], on: loop).map { $0.string }
    }
}
