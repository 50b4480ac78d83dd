import Foundation
import NIOCore

/// Sessions in Redis. The key holds the SHA-256 of the session id, so a copy
/// of Redis' data holds no usable cookie; the value is `user \n createdMs \n generation`.
/// Each use slides the idle expiry, never past the absolute lifetime.
///
/// The generation is a digest of the user's password hash when the session was made;
/// `sc:cred:<user>` holds the current one (gateways write it from the users file). A
/// session whose generation is not the current one is gone: removing a user or changing
/// a password ends every session made before.
public struct SessionStore: Sendable {
    public let redis: RedisClient
    public let idleSeconds: Int
    public let absoluteSeconds: Int

    /// Redis pub/sub channel on which logouts are announced (payload: the session hash).
    public static let logoutChannel = "sc:logout"
    public static let cookieName = "__Host-sc_session"
    /// Channel on which a user whose credentials changed or who was removed is announced
    /// (payload: the user name): workers close that user's streams with 4001.
    public static let credentialsChannel = "sc:user-ended"
    /// Every user name with a `sc:cred:` key, so a removed one can be found.
    public static let usersKey = "sc:users"

    public static func credentialKey(_ user: String) -> String { "sc:cred:" + user }

    /// The generation of a password hash (its PHC string): 16 hex digits of its SHA-256.
    public static func generation(ofHash phc: String) -> String { String(Crypto.sha256Hex(phc).prefix(16)) }

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
    /// idle expiry; nil when unknown, expired, or of an earlier generation of its user's
    /// credentials (then it is deleted). Completed on `eventLoop`.
    public func lookup(hash: String, on eventLoop: EventLoop) -> EventLoopFuture<Session?> {
        let key = Self.key(hash: hash)
        let redis = self.redis
        return redis.sendChecked(["GET", key], on: eventLoop).flatMap { value -> EventLoopFuture<Session?> in
            guard let text = value.string else { return eventLoop.makeSucceededFuture(nil) }
            let parts = text.split(separator: "\n", omittingEmptySubsequences: false)
            guard parts.count == 3, let created = Int64(parts[1]) else {
                // Unreadable, or from before generations: not a session any more.
                return redis.sendChecked(["DEL", key], on: eventLoop).map { _ in nil }
            }
            let session = Session(user: String(parts[0]), endsAtMs: created + Int64(absoluteSeconds) * 1000)
            let generation = String(parts[2])
            return redis.sendChecked(["GET", Self.credentialKey(session.user)], on: eventLoop).flatMap { current in
                guard current.string == generation else {
                    return redis.sendChecked(["DEL", key], on: eventLoop).map { _ in nil }
                }
                return self.slide(key: key, endsAtMs: session.endsAtMs, on: eventLoop).map { $0 ? session : nil }
            }
        }
    }

    /// A live session, sliding its idle expiry; nil when unknown or expired (Redis errors fail
    /// the future). Completed on `eventLoop`, as are all of these.
    public func lookup(_ sessionID: String, on eventLoop: EventLoop) -> EventLoopFuture<Session?> {
        guard Self.isWellFormed(sessionID) else { return eventLoop.makeSucceededFuture(nil) }
        return lookup(hash: Self.hash(sessionID), on: eventLoop)
    }

    /// Creates a session for `user`, whose password hash has `generation`, with a fresh id and
    /// returns the id. The generation is recorded for the user if none is yet (a gateway's
    /// users-file sync records changes).
    public func create(user: String, generation: String, on eventLoop: EventLoop) -> EventLoopFuture<String> {
        do {
            let id = try Crypto.newToken()
            let ttl = min(idleSeconds, absoluteSeconds)
            return redis.sendChecked(["SET", Self.credentialKey(user), generation, "NX"], on: eventLoop).flatMap { _ in
                self.redis.sendChecked(["SADD", Self.usersKey, user], on: eventLoop)
            }.flatMap { _ in
                self.redis.sendChecked(["SET", Self.key(hash: Self.hash(id)), "\(user)\n\(Self.nowMs())\n\(generation)", "EX", String(ttl)], on: eventLoop)
            }.map { _ in id }
        } catch {
            return eventLoop.makeFailedFuture(error)
        }
    }

    /// Makes Redis' credential generations those of `generations` (user → generation, the
    /// whole users file): removed users lose theirs, changed ones get the new one, and each
    /// of them is announced so that their open streams close. Returns the users announced.
    public func syncGenerations(_ generations: [String: String]) async throws -> [String] {
        var ended: [String] = []
        let known = try await redis.send(["SMEMBERS", Self.usersKey]).array?.compactMap(\.string) ?? []
        for user in known where generations[user] == nil {
            _ = try await redis.send(["DEL", Self.credentialKey(user)])
            _ = try await redis.send(["SREM", Self.usersKey, user])
            ended.append(user)
        }
        let names = generations.keys.sorted()
        var start = 0
        while start < names.count {
            let chunk = Array(names[start..<min(start + 500, names.count)])
            start += chunk.count
            let current = try await redis.send(["MGET"] + chunk.map(Self.credentialKey)).array ?? []
            for (i, user) in chunk.enumerated() {
                let was = i < current.count ? current[i].string : nil
                guard was != generations[user] else { continue }
                _ = try await redis.send(["SET", Self.credentialKey(user), generations[user]!])
                _ = try await redis.send(["SADD", Self.usersKey, user])
                if was != nil { ended.append(user) }
            }
        }
        for user in ended { _ = try await redis.send(["PUBLISH", Self.credentialsChannel, user]) }
        return ended
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

    /// The session cookie's value from the `Cookie` headers, if present exactly once. Two of
    /// them (say one planted by a sibling subdomain under another path) are refused, never
    /// chosen between: the request then has no session.
    public static func sessionID(fromCookieHeaders headers: [String]) -> String? {
        var found: String?
        for header in headers {
            for part in header.split(separator: ";") {
                let kv = part.split(separator: "=", maxSplits: 1)
                if kv.count == 2, kv[0].trimmingCharacters(in: .whitespaces) == cookieName {
                    guard found == nil else { return nil }
                    found = kv[1].trimmingCharacters(in: .whitespaces)
                }
            }
        }
        return found
    }
}
