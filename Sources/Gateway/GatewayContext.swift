import ChatCore
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Proto
import ServiceLifecycle

/// Everything the gateway's request handlers share.
struct GatewayContext: Sendable {
    let sessions: SessionStore
    let redis: RedisClient
    let coordinator: CoordinatorLink
    let limiter: RateLimiterClient
    let users: UsersStore
    let files: StaticFiles
    let allowedOrigins: [String]
    let threadPool: NIOThreadPool
    let logger: Logger
    let maxBodyBytes: Int
    let fileLimits: FileLimits
    let uploads: UploadGate
    let requestTimeout: TimeAmount
    let directory: WorkerDirectory
    let connections: ConnectionRegistry
    let links: GatewayLinks
    let streamLimits: StreamLimits
    let logins: LoginGate
    /// `--worker-header`: name the worker in the upgrade's `X-SecureChat-Worker` header.
    let exposeWorkerHeader: Bool
    /// `--proxy-protocol`: every connection starts with a PROXY header (v1 or v2) naming the client.
    let proxyProtocol: Bool

    /// Origins allowed for this request: the configured ones, else `https://` + Host.
    func isAllowedOrigin(_ origin: String, host: String?) -> Bool {
        if origin == "null" { return false }
        if !allowedOrigins.isEmpty { return allowedOrigins.contains(origin) }
        guard let host else { return false }
        return origin == "https://" + host
    }
}

/// The password checks this gateway runs at once (each is a scrypt on the thread pool):
/// bounded, so a flood of logins gets 503 at once instead of a queue that grows without end.
final class LoginGate: Sendable {
    let limit: Int
    private let inFlight = NIOLockedValueBox(0)

    init(limit: Int) {
        self.limit = limit
    }

    var count: Int { inFlight.withLockedValue { $0 } }

    /// Takes a place, if one is free.
    func enter() -> Bool {
        let entered = inFlight.withLockedValue { n in
            guard n < limit else { return false }
            n += 1
            return true
        }
        if entered { Telemetry.passwordChecksInFlight.increment() }
        return entered
    }

    func leave() {
        inFlight.withLockedValue { $0 -= 1 }
        Telemetry.passwordChecksInFlight.decrement()
    }
}

/// users.json, reloaded when its modification time changes, and password checks
/// that take the same work for unknown users as for known ones.
final class UsersStore: Sendable {
    private let path: String
    /// `dummy` is checked for unknown names: a hash with the parameters most of the real ones
    /// have, so an unknown name costs what a known one does.
    private let state: NIOLockedValueBox<(users: UsersFile, mtime: timespec, dummy: PasswordHash)>

    /// Demo accounts found at start-up (allowed with `--allow-demo-users`; shown in /healthz).
    let demoAccounts: [String]

    init(path: String, allowDemo: Bool) throws {
        self.path = path
        let users = try UsersFile(path: path)
        demoAccounts = try UsersFile.checkDemoAccounts(in: users, path: path, allowed: allowDemo)
        state = NIOLockedValueBox((users, Self.mtime(path), try Self.dummy(like: users)))
    }

    /// A hash of a random password with the most common parameters of `users` (defaults if empty).
    static func dummy(like users: UsersFile) throws -> PasswordHash {
        var counts: [[Int]: Int] = [:]
        for h in users.users.values { counts[[h.logN, h.r, h.p], default: 0] += 1 }
        let common = counts.sorted { a, b in a.value != b.value ? a.value > b.value : a.key.lexicographicallyPrecedes(b.key) }.first?.key
        guard let common else { return try PasswordHash.make(password: Crypto.newToken()) }
        return try PasswordHash.make(password: Crypto.newToken(), logN: common[0], r: common[1], p: common[2])
    }

    /// The dummy's parameters (for tests and logs).
    var dummyParameters: (logN: Int, r: Int, p: Int) {
        state.withLockedValue { ($0.dummy.logN, $0.dummy.r, $0.dummy.p) }
    }

    static func mtime(_ path: String) -> timespec {
        var st = stat()
        guard stat(path, &st) == 0 else { return timespec() }
        return st.st_mtim
    }

    var count: Int { state.withLockedValue { $0.users.users.count } }

    /// Re-reads the file if it changed since the last read; true when it did.
    @discardableResult
    func reloadIfChanged(logger: Logger) -> Bool {
        let m = Self.mtime(path)
        let current = state.withLockedValue { $0.mtime }
        guard m.tv_sec != current.tv_sec || m.tv_nsec != current.tv_nsec else { return false }
        do {
            let users = try UsersFile(path: path)
            let dummy = try Self.dummy(like: users)
            state.withLockedValue { $0 = (users, m, dummy) }
            logger.info("users file reloaded", metadata: ["users": "\(users.users.count)"])
            return true
        } catch {
            logger.error("users file unreadable; keeping the previous one", metadata: ["error": "\(error)"])
            return false
        }
    }

    /// Every user's credential generation (SessionStore), from the file as last read.
    var generations: [String: String] {
        state.withLockedValue { s in s.users.users.mapValues { SessionStore.generation(ofHash: $0.string) } }
    }

    /// Call from a thread pool: scrypt is deliberately slow. The generation of the hash that
    /// matched when the password is right (the session records it), else nil.
    func verify(user: String, password: String, logger: Logger) -> String? {
        reloadIfChanged(logger: logger)
        let (users, dummy) = state.withLockedValue { ($0.users, $0.dummy) }
        guard let hash = users.users[user] else {
            _ = dummy.verify(password: password)
            return nil
        }
        return hash.verify(password: password) ? SessionStore.generation(ofHash: hash.string) : nil
    }
}

/// Keeps Redis' credential generations those of the users file: at start and within a
/// second of every change (`securechat users passwd|remove`), so a removed user or a
/// changed password ends that user's sessions and closes their streams (4001).
struct CredentialSync: Service {
    let users: UsersStore
    let sessions: SessionStore
    let logger: Logger

    func run() async throws {
        var synced = false
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            if users.reloadIfChanged(logger: logger) { synced = false }
            if !synced {
                do {
                    let ended = try await sessions.syncGenerations(users.generations)
                    synced = true
                    if !ended.isEmpty {
                        logger.info("credentials changed; sessions ended", metadata: ["users": "\(ended.count)"])
                    }
                } catch {
                    logger.warning("credential sync failed; retrying", metadata: ["error": "\(error)"])
                }
            }
            // Soon again after a failure (Redis still starting): invites and dms know users by it.
            await sleepUnlessShuttingDown(seconds: synced ? 1 : 0.2)
        }
    }
}

/// The routable workers as last listed by the coordinator, so gateways keep
/// handing off streams (least load first) while the coordinator is away.
final class WorkerDirectory: Service, Sendable {
    private let link: CoordinatorLink
    private let cache = NIOLockedValueBox<[WorkerInfo]>([])
    private let logger: Logger

    init(link: CoordinatorLink, logger: Logger) {
        self.link = link
        self.logger = logger
    }

    func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            if case let .workers(list)? = try? await link.call(.listWorkers) {
                cache.withLockedValue { $0 = list }
            }
            await sleepUnlessShuttingDown(seconds: count == 0 ? 0.1 : 1)
        }
    }

    var count: Int { cache.withLockedValue { $0.count } }

    /// A worker from the cached list, spreading picks as the list's loads would.
    func fallback(excluding: [String]) -> WorkerInfo? {
        cache.withLockedValue { list in
            let candidates = list.indices.filter { !excluding.contains(list[$0].id) }
            guard let i = candidates.min(by: { (list[$0].load, list[$0].id) < (list[$1].load, list[$1].id) }) else { return nil }
            list[i].load += 1
            return list[i]
        }
    }
}

/// Client connections of this gateway, so a shutdown can close idle HTTP ones
/// at once and wait for WebSocket streams to be drained by their workers.
final class ConnectionRegistry: Sendable {
    private let channels = NIOLockedValueBox<[ObjectIdentifier: (channel: Channel, stream: Bool)]>([:])

    func add(_ channel: Channel) {
        let id = ObjectIdentifier(channel)
        channels.withLockedValue { $0[id] = (channel, false) }
        channel.closeFuture.whenComplete { _ in _ = self.channels.withLockedValue { $0.removeValue(forKey: id) } }
    }

    func markStream(_ channel: Channel) {
        channels.withLockedValue { $0[ObjectIdentifier(channel)]?.stream = true }
    }

    var count: Int { channels.withLockedValue { $0.count } }

    func closeIdle() {
        for c in channels.withLockedValue({ $0.values.filter { !$0.stream } }) { c.channel.close(promise: nil) }
    }

    func closeAll() {
        for c in channels.withLockedValue({ Array($0.values) }) { c.channel.close(promise: nil) }
    }
}
