import Proto

/// Parameters of one limit: a burst of `burst` cells, then one every `interval` seconds.
public struct RateLimit: Sendable, Equatable {
    public var burst: Int
    public var interval: Double

    public init(burst: Int, interval: Double) {
        self.burst = max(1, burst)
        self.interval = max(0.000_001, interval)
    }
}

/// The limits of protocol.md, configurable by flags (see README).
public struct RateLimits: Sendable, Equatable {
    public var message = RateLimit(burst: 5, interval: 1)
    public var loginUser = RateLimit(burst: 5, interval: 12)
    public var loginAddress = RateLimit(burst: 20, interval: 3)
    public var loginName = RateLimit(burst: 30, interval: 2)
    public var sync = RateLimit(burst: 30, interval: 1)
    public var request = RateLimit(burst: 60, interval: 0.1)

    public init() {}

    /// Reads `--msg-burst`, `--msg-per-second`, `--login-user-per-minute`, `--login-address-per-minute`.
    public init(options: Options) throws {
        let msgBurst = try options.int("msg-burst", default: 5)
        let msgRate = try options.double("msg-per-second", default: 1)
        let userPerMin = try options.int("login-user-per-minute", default: 5)
        let addrPerMin = try options.int("login-address-per-minute", default: 20)
        let namePerMin = try options.int("login-name-per-minute", default: 30)
        let syncBurst = try options.int("sync-burst", default: 30)
        let syncRate = try options.double("sync-per-second", default: 1)
        let requestBurst = try options.int("request-burst", default: 60)
        let requestRate = try options.double("requests-per-second", default: 10)
        guard msgBurst > 0, msgRate > 0, userPerMin > 0, addrPerMin > 0, namePerMin > 0, syncBurst > 0, syncRate > 0,
              requestBurst > 0, requestRate > 0 else {
            throw Options.Invalid("rate limits must be positive")
        }
        message = RateLimit(burst: msgBurst, interval: 1 / msgRate)
        loginUser = RateLimit(burst: userPerMin, interval: 60 / Double(userPerMin))
        loginAddress = RateLimit(burst: addrPerMin, interval: 60 / Double(addrPerMin))
        loginName = RateLimit(burst: namePerMin, interval: 60 / Double(namePerMin))
        sync = RateLimit(burst: syncBurst, interval: 1 / syncRate)
        request = RateLimit(burst: requestBurst, interval: 1 / requestRate)
    }

    public subscript(kind: RateLimitKind) -> RateLimit {
        switch kind {
        case .message: return message
        case .loginUser: return loginUser
        case .loginAddress: return loginAddress
        case .loginName: return loginName
        case .sync: return sync
        case .request: return request
        }
    }

    /// The same limits as command-line flags, for passing on to child processes.
    public var arguments: [String] {
        ["--msg-burst", String(message.burst), "--msg-per-second", String(1 / message.interval),
         "--login-user-per-minute", String(loginUser.burst), "--login-address-per-minute", String(loginAddress.burst),
         "--login-name-per-minute", String(loginName.burst), "--sync-burst", String(sync.burst), "--sync-per-second", String(1 / sync.interval),
         "--request-burst", String(request.burst), "--requests-per-second", String(1 / request.interval)]
    }
}

/// The generic cell rate algorithm over many keys, without I/O or clocks:
/// the caller passes `now` (seconds). A key's state is its theoretical arrival time (TAT).
public struct GCRA: Sendable {
    public struct Decision: Equatable, Sendable {
        public var allowed: Bool
        /// When not allowed: how long until one cell is free.
        public var retryAfter: Double
        /// Decided by this process's own GCRA (the coordinator was away), not the coordinator's.
        public var local: Bool

        public init(allowed: Bool, retryAfter: Double, local: Bool = false) {
            self.allowed = allowed
            self.retryAfter = retryAfter
            self.local = local
        }
    }

    private var tat: [String: Double] = [:]
    public let limits: RateLimits
    /// Bound on remembered keys; stale ones are pruned first.
    public let maxKeys: Int

    /// When set: every key of `spentKinds` not seen yet counts as having spent its whole burst
    /// at this time (a coordinator that takes over does not know what its predecessor allowed,
    /// so it assumes the most). It refills at the normal rate; a burst later it makes no difference.
    public let spentAt: Double?
    public let spentKinds: Set<RateLimitKind>

    public init(limits: RateLimits, maxKeys: Int = 1_000_000, spentAt: Double? = nil, spentKinds: Set<RateLimitKind> = Set(RateLimitKind.allCases)) {
        self.limits = limits
        self.maxKeys = maxKeys
        self.spentAt = spentAt
        self.spentKinds = spentKinds
    }

    /// The state of one key (`kind:key`), if it has any.
    public func tat(fullKey: String) -> Double? { tat[fullKey] }

    /// Sets the state of one key (`kind:key`), as a predecessor left it.
    public mutating func seed(fullKey: String, tat value: Double) {
        guard tat.count < maxKeys || tat[fullKey] != nil else { return }
        tat[fullKey] = max(tat[fullKey] ?? value, value)
    }

    public static func fullKey(_ kind: RateLimitKind, _ key: String) -> String { "\(kind.rawValue):\(key)" }

    public var keyCount: Int { tat.count }

    /// Checks one cell for `key`; spends it when `consume` and allowed.
    public mutating func check(kind: RateLimitKind, key: String, now: Double, consume: Bool = true) -> Decision {
        let limit = limits[kind]
        let fullKey = Self.fullKey(kind, key)
        let tolerance = limit.interval * Double(limit.burst - 1)
        let current = max(tat[fullKey] ?? floor(kind, limit, now: now), now)
        if current - now > tolerance {
            return Decision(allowed: false, retryAfter: current - now - tolerance)
        }
        if consume {
            if tat.count >= maxKeys { prune(now: now) }
            if tat.count < maxKeys || tat[fullKey] != nil { tat[fullKey] = current + limit.interval }
        }
        return Decision(allowed: true, retryAfter: 0)
    }

    /// A key's state before it is seen: now, or its burst spent at `spentAt`.
    private func floor(_ kind: RateLimitKind, _ limit: RateLimit, now: Double) -> Double {
        guard let spentAt, spentKinds.contains(kind) else { return now }
        return max(now, spentAt + limit.interval * Double(limit.burst))
    }

    /// Records a cell spent elsewhere (the coordinator allowed it), whatever this state says:
    /// the local shadow that a fallback starts from.
    public mutating func record(kind: RateLimitKind, key: String, now: Double) {
        let limit = limits[kind]
        let fullKey = Self.fullKey(kind, key)
        if tat.count >= maxKeys, tat[fullKey] == nil { prune(now: now) }
        guard tat.count < maxKeys || tat[fullKey] != nil else { return }
        tat[fullKey] = max(tat[fullKey] ?? floor(kind, limit, now: now), now) + limit.interval
    }

    /// Gives back one cell spent on `key` (a login that succeeded, or was refused elsewhere).
    public mutating func refund(kind: RateLimitKind, key: String, now: Double) {
        let fullKey = Self.fullKey(kind, key)
        guard let t = tat[fullKey] else { return }
        let back = t - limits[kind].interval
        if back <= now { tat.removeValue(forKey: fullKey) } else { tat[fullKey] = back }
    }

    /// Forgets keys whose TAT has passed: for them a fresh state is identical.
    public mutating func prune(now: Double) {
        tat = tat.filter { $0.value > now }
    }
}
