import Foundation
import NIOCore

/// Sessions in Redis. The key holds the SHA-256 of the session id, so a copy
/// of Redis' data holds no usable cookie; the value is `user \n createdMs`.
/// Each use slides the idle expiry, never past the absolute lifetime.
public struct SessionStore: Sendable {
    public let redis: RedisClient
    public let idleSeconds: Int
    public let absoluteSeconds: Int

    /// Redis pub/sub channel on which logouts are announced (payload: the session hash).
    public static let logoutChannel = "sc:logout"
    public static let cookieName = "sc_session"

    public init(redis: RedisClient, idleSeconds: Int, absoluteSeconds: Int) {
        self.redis = redis
        self.idleSeconds = idleSeconds
        self.absoluteSeconds = absoluteSeconds
    }

    public static func hash(_ sessionID: String) -> String { Crypto.sha256Hex(sessionID) }

    static func key(hash: String) -> String { "sc:session:" + hash }

    public static func nowMs() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    /// A live session: its user and the instant (ms since 1970) its absolute lifetime ends.
    public struct Session: Sendable, Equatable {
        public var user: String
        public var endsAtMs: Int64
    }

    /// A live session looked up by the hash of its id (what a worker is given), sliding its
    /// idle expiry; nil when unknown or expired. Completed on `eventLoop`.
    public func lookup(hash: String, on eventLoop: EventLoop) -> EventLoopFuture<Session?> {
        let key = Self.key(hash: hash)
        return redis.sendChecked(["GET", key], on: eventLoop).flatMap { value -> EventLoopFuture<Session?> in
            guard let text = value.string else { return eventLoop.makeSucceededFuture(nil) }
            let parts = text.split(separator: "\n", maxSplits: 1)
            guard parts.count == 2, let created = Int64(parts[1]) else { return eventLoop.makeSucceededFuture(nil) }
            let session = Session(user: String(parts[0]), endsAtMs: created + Int64(absoluteSeconds) * 1000)
            return slide(key: key, endsAtMs: session.endsAtMs, on: eventLoop).map { $0 ? session : nil }
        }
    }

    /// A live session, sliding its idle expiry; nil when unknown or expired (Redis errors fail
    /// the future). Completed on `eventLoop`, as are all of these.
    public func lookup(_ sessionID: String, on eventLoop: EventLoop) -> EventLoopFuture<Session?> {
        guard Self.isWellFormed(sessionID) else { return eventLoop.makeSucceededFuture(nil) }
        return lookup(hash: Self.hash(sessionID), on: eventLoop)
    }

    /// Creates a session for `user` with a fresh id and returns the id.
    public func create(user: String, on eventLoop: EventLoop) -> EventLoopFuture<String> {
        do {
            let id = try Crypto.newToken()
            let ttl = min(idleSeconds, absoluteSeconds)
            return redis.sendChecked(["SET", Self.key(hash: Self.hash(id)), "\(user)\n\(Self.nowMs())", "EX", String(ttl)], on: eventLoop)
                .map { _ in id }
        } catch {
            return eventLoop.makeFailedFuture(error)
        }
    }

    /// Deletes the session and tells every worker to close its streams (4001). True if it existed.
    public func destroy(_ sessionID: String, on eventLoop: EventLoop) -> EventLoopFuture<Bool> {
        guard Self.isWellFormed(sessionID) else { return eventLoop.makeSucceededFuture(false) }
        let hash = Self.hash(sessionID)
        return redis.sendChecked(["DEL", Self.key(hash: hash)], on: eventLoop).flatMap { deleted in
            self.redis.sendChecked(["PUBLISH", Self.logoutChannel, hash], on: eventLoop).map { _ in (deleted.int ?? 0) > 0 }
        }
    }

    /// Keeps a session that an open WebSocket is using from expiring for idleness (never past
    /// its absolute end). False when the session is gone: logged out, expired, or past its end.
    public func keepAlive(hash: String, endsAtMs: Int64, on eventLoop: EventLoop) -> EventLoopFuture<Bool> {
        slide(key: Self.key(hash: hash), endsAtMs: endsAtMs, on: eventLoop)
    }

    private func slide(key: String, endsAtMs: Int64, on eventLoop: EventLoop) -> EventLoopFuture<Bool> {
        let remaining = (endsAtMs - Self.nowMs()) / 1000
        guard remaining > 0 else {
            return redis.sendChecked(["DEL", key], on: eventLoop).map { _ in false }
        }
        return redis.sendChecked(["EXPIRE", key, String(min(Int64(idleSeconds), remaining))], on: eventLoop).map { $0.int == 1 }
    }

    /// Session ids are 43 base64url characters; anything else is never looked up.
    public static func isWellFormed(_ id: String) -> Bool {
        id.utf8.count == 43 && id.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2D || c == 0x5F
        }
    }

    /// The session cookie's value from a `Cookie` header, if present.
    public static func sessionID(fromCookieHeaders headers: [String]) -> String? {
        for header in headers {
            for part in header.split(separator: ";") {
                let kv = part.split(separator: "=", maxSplits: 1)
                if kv.count == 2, kv[0].trimmingCharacters(in: .whitespaces) == cookieName {
                    return kv[1].trimmingCharacters(in: .whitespaces)
                }
            }
        }
        return nil
    }
}
