import ChatCore
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import Proto

/// Files (protocol.md, "Files"): uploaded as they are (in an encrypted room, the browser's
/// ciphertext), kept in Redis so any gateway serves any file, and served only to members of
/// the room they were uploaded to.
///
/// - `sc:file:<id>` hash: `room`, `owner`, `size`, `created`, `data` (base64: the Redis client
///   speaks text; 4/3 of the size), no expiry
/// - `sc:files:bytes`: bytes stored in all (base64), against `--files-quota-bytes`
struct FileLimits: Sendable {
    var maxBytes = 10 << 20
    var quotaBytes = 1 << 30
}

enum FileStore {
    /// ARGV: user, room. "ok" when the user may use the room's files (a member; everyone for lobby).
    static let memberScript = RedisScript("""
    local u, r = ARGV[1], ARGV[2]
    if r == 'lobby' then return 'ok' end
    if redis.call('EXISTS', 'sc:room:' .. r .. ':meta') == 0 then return 'not_found' end
    if redis.call('SISMEMBER', 'sc:room:' .. r .. ':members', u) == 1 then return 'ok' end
    return 'not_found'
    """)

    /// ARGV: id, room, owner, size, data, quota, now. Membership is checked again inside.
    static let putScript = RedisScript("""
    local id, r, u = ARGV[1], ARGV[2], ARGV[3]
    if r ~= 'lobby' and redis.call('SISMEMBER', 'sc:room:' .. r .. ':members', u) == 0 then return 'not_found' end
    local used = tonumber(redis.call('GET', 'sc:files:bytes') or '0')
    if used + #ARGV[5] > tonumber(ARGV[6]) then return 'quota' end
    redis.call('HSET', 'sc:file:' .. id, 'room', r, 'owner', u, 'size', ARGV[4], 'created', ARGV[7], 'data', ARGV[5])
    redis.call('INCRBY', 'sc:files:bytes', #ARGV[5])
    return 'ok'
    """)

    /// ARGV: id, user. The file's data if the user is a member of its room, else nil.
    static let getScript = RedisScript("""
    local f = redis.call('HMGET', 'sc:file:' .. ARGV[1], 'room', 'data')
    if not f[1] then return false end
    local r = f[1]
    if r ~= 'lobby' and redis.call('SISMEMBER', 'sc:room:' .. r .. ':members', ARGV[2]) == 0 then return false end
    return f[2]
    """)

    /// A file id: 128 random bits, hex.
    static func isValidID(_ s: Substring) -> Bool { s.utf8.count == 32 && s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) } }
}

/// Bytes of upload bodies all of a gateway's connections are receiving at once: past the cap
/// an upload is refused (503 busy) before its body is read, so strangers cannot make the
/// gateway hold `--max-file-bytes` per connection.
final class UploadGate: Sendable {
    private let inFlight = NIOLockedValueBox(0)
    let limit: Int

    init(limit: Int) { self.limit = limit }

    func reserve(_ bytes: Int) -> Bool {
        inFlight.withLockedValue { n in
            guard n + bytes <= limit else { return false }
            n += bytes
            return true
        }
    }

    func release(_ bytes: Int) { inFlight.withLockedValue { $0 = max(0, $0 - bytes) } }
}

extension GatewayHTTPHandler {
    /// An upload refused on its head alone: no session cookie, another content type, no
    /// length, too large, or the gateway receiving too many uploads at once.
    func uploadRefusal(_ head: HTTPRequestHead, length: Int?) -> (HTTPResponseStatus, String)? {
        guard Self.sessionID(head) != nil else { return (.unauthorized, "unauthenticated") }
        let contentType = head.headers["content-type"].first?.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        guard contentType == "application/octet-stream" else { return (.unsupportedMediaType, "unsupported_media_type") }
        guard let length else { return (.lengthRequired, "length_required") }
        guard length <= ctx.fileLimits.maxBytes else { return (.payloadTooLarge, "too_large") }
        guard ctx.uploads.reserve(length) else { return (.serviceUnavailable, "busy") }
        uploadReserved = length
        return nil
    }

    static func query(_ uri: String, _ name: String) -> String? {
        guard let q = uri.split(separator: "?", maxSplits: 1).dropFirst().first else { return nil }
        for pair in q.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            if kv.first.map(String.init) == name { return kv.count > 1 ? String(kv[1]).removingPercentEncoding : "" }
        }
        return nil
    }

    func uploadFile(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, _ body: ByteBuffer) {
        guard originAllowed(head) else {
            uploadReserved = 0
            respondJSON(context, .forbidden, ["ok": false, "error": "forbidden_origin"])
            return
        }
        guard let rawRoom = Self.query(head.uri, "room"), let room = RoomID.reference(rawRoom) else {
            uploadReserved = 0
            respondJSON(context, .badRequest, ["ok": false, "error": "bad_request"])
            return
        }
        let ctx = self.ctx, loop = context.eventLoop, size = body.readableBytes
        withSession(context, head) { h, context, user in
            guard let user else {
                h.uploadReserved = 0
                h.respondJSON(context, .unauthorized, ["ok": false, "error": "unauthenticated"])
                return
            }
            let bound = NIOLoopBound((h, context), eventLoop: loop)
            // Uploads have their own bucket of the request limit.
            ctx.limiter.check(.request, key: "file|" + user, on: loop).flatMap { decision -> EventLoopFuture<(String, String?)> in
                guard decision.allowed else { return loop.makeSucceededFuture(("rate_limited", nil)) }
                return ctx.redis.evalScriptFuture(FileStore.memberScript, keys: [], args: [user, room], on: loop).flatMap { reply in
                    guard reply.string == "ok" else { return loop.makeSucceededFuture(("not_found", nil)) }
                    guard let id = try? Crypto.randomBytes(16).map({ String(format: "%02x", $0) }).joined() else { return loop.makeSucceededFuture(("unavailable", nil)) }
                    let data = Data(body.readableBytesView).base64EncodedString()
                    return ctx.redis.evalScriptFuture(FileStore.putScript, keys: [], args: [id, room, user, String(size), data, String(ctx.fileLimits.quotaBytes), String(SessionStore.nowMs())], on: loop)
                        .map { ($0.string ?? "unavailable", id) }
                }
            }.whenComplete { result in
                let (h, context) = bound.value
                switch result {
                case .success(("ok", let id?)):
                    h.uploadReserved = 0
                    Telemetry.filesStored.increment()
                    h.respondJSON(context, .created, ["ok": true, "id": id, "size": size])
                case .success(("rate_limited", _)):
                    h.uploadReserved = 0
                    var headers = HTTPHeaders()
                    headers.add(name: "Retry-After", value: "1")
                    h.respondJSON(context, .tooManyRequests, ["ok": false, "error": "rate_limited", "retry_after": 1], extra: headers)
                case .success(("not_found", _)):
                    h.uploadReserved = 0
                    h.respondJSON(context, .notFound, ["ok": false, "error": "not_found"])
                case .success(("quota", _)):
                    h.uploadReserved = 0
                    h.respondJSON(context, .insufficientStorage, ["ok": false, "error": "quota"])
                default:
                    h.uploadReserved = 0
                    h.respondJSON(context, .serviceUnavailable, ["ok": false, "error": "unavailable"])
                }
            }
        }
    }

    func downloadFile(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, id: Substring) {
        guard FileStore.isValidID(id) else {
            respondJSON(context, .notFound, ["ok": false, "error": "not_found"])
            return
        }
        let ctx = self.ctx, loop = context.eventLoop, fileID = String(id)
        withSession(context, head) { h, context, user in
            guard let user else {
                h.respondJSON(context, .unauthorized, ["ok": false, "error": "unauthenticated"])
                return
            }
            let bound = NIOLoopBound((h, context), eventLoop: loop)
            ctx.redis.evalScriptFuture(FileStore.getScript, keys: [], args: [fileID, user], on: loop).whenComplete { result in
                let (h, context) = bound.value
                switch result {
                case let .success(reply):
                    guard let text = reply.string, let data = Data(base64Encoded: text) else {
                        h.respondJSON(context, .notFound, ["ok": false, "error": "not_found"])
                        return
                    }
                    var headers = HTTPHeaders()
                    headers.add(name: "Content-Disposition", value: "attachment")
                    h.respond(context, .ok, contentType: "application/octet-stream", body: ByteBuffer(bytes: data), extra: headers)
                case .failure:
                    h.respondJSON(context, .serviceUnavailable, ["ok": false, "error": "unavailable"])
                }
            }
        }
    }
}
