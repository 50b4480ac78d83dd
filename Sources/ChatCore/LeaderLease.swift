/// Which coordinator is the active one, through one lease in Redis, as a pure value: events
/// in (a tick of the clock, the answer to an attempt), actions out. The caller runs the
/// attempts (`SET … NX PX` or a renewal of our own lease, in one script) and passes `now`.
///
/// Safety does not rest on Redis's expiry alone. An attempt sent at `t` and answered "yours"
/// makes this process active until `t + ttl × trust`, by its own monotonic clock: earlier than
/// Redis lets the lease go (at `t' + ttl` for the moment `t' ≥ t` that Redis ran it), by a
/// margin for clocks that run at different rates. Past that moment it is not active, whether
/// or not it has heard anything: a process paused (SIGSTOP, a long GC) or cut
/// off wakes up no longer active and serves nothing (the caller's clock must count a suspended
/// machine too: CLOCK_BOOTTIME). Each lease taken afresh gets a new epoch from a counter in
/// Redis; clients refuse a coordinator whose epoch is older than one they
/// have seen (the fencing token), so a stale coordinator cannot win a client back.
public struct LeaderLease: Sendable, Equatable {
    public enum Action: Sendable, Equatable {
        /// Run one attempt: take the lease if free, renew it if ours. Answer with `answered`/`failed`.
        case attempt
        case becameActive(epoch: UInt64)
        case steppedDown(Reason)
    }

    public enum Reason: Sendable, Equatable {
        /// No renewal was answered in time.
        case expired
        /// Redis says another coordinator holds the lease.
        case lost
        /// This process is stopping (the caller then releases the lease).
        case resigned
    }

    /// The lease's time to live in Redis.
    public let ttl: Double
    /// How often the active coordinator renews (a few times per `ttl`).
    public let renewEvery: Double
    /// How often a standby tries to take the lease.
    public let retryEvery: Double
    /// The fraction of `ttl` this process counts on after an attempt was sent.
    public let trust: Double

    public private(set) var epoch: UInt64?
    /// Active until this moment (monotonic seconds); meaningless while `epoch` is nil.
    public private(set) var until: Double = 0
    /// When the attempt in flight was sent.
    private var sentAt: Double?
    private var nextAttempt: Double = 0
    private var resigned = false

    public init(ttl: Double, renewEvery: Double? = nil, retryEvery: Double? = nil, trust: Double = 0.8) {
        self.ttl = ttl
        self.renewEvery = renewEvery ?? ttl / 4
        self.retryEvery = retryEvery ?? min(0.25, ttl / 8)
        self.trust = trust
    }

    /// Whether this process may answer as the active coordinator now.
    public func isActive(now: Double) -> Bool { epoch != nil && now < until }

    /// The clock moved: step down once the lease may have lapsed; start an attempt when due.
    public mutating func tick(now: Double) -> [Action] {
        var actions: [Action] = []
        if epoch != nil, now >= until {
            epoch = nil
            actions.append(.steppedDown(.expired))
        }
        if !resigned, sentAt == nil, now >= nextAttempt {
            sentAt = now
            actions.append(.attempt)
        }
        return actions
    }

    /// The attempt in flight was answered: the lease is ours under `epoch`, or (nil) another's.
    public mutating func answered(epoch answer: UInt64?, now: Double) -> [Action] {
        guard let sent = sentAt else { return [] }
        sentAt = nil
        guard !resigned else { return [] }
        guard let answer else {
            nextAttempt = now + retryEvery
            if epoch != nil {
                epoch = nil
                return [.steppedDown(.lost)]
            }
            return []
        }
        nextAttempt = sent + renewEvery
        let newUntil = sent + ttl * trust
        var actions: [Action] = []
        if let current = epoch, current != answer {
            // Ours under another epoch: we lapsed and took it again in between. Start afresh.
            epoch = nil
            actions.append(.steppedDown(.lost))
        }
        guard newUntil > now else {
            // Answered too late to count on: whatever it was, it may have lapsed already.
            if epoch != nil {
                epoch = nil
                actions.append(.steppedDown(.expired))
            }
            nextAttempt = now
            return actions
        }
        if epoch == nil {
            epoch = answer
            actions.append(.becameActive(epoch: answer))
        }
        until = max(until, newUntil)
        return actions
    }

    /// The attempt in flight failed (Redis unreachable, a timeout): try again soon. The lease,
    /// if held, stays until `until` and no longer.
    public mutating func failed(now: Double) -> [Action] {
        guard sentAt != nil else { return [] }
        sentAt = nil
        nextAttempt = now + retryEvery
        return tick(now: now)
    }

    /// The process is stopping: not active from now on, and no more attempts.
    public mutating func resign() -> [Action] {
        resigned = true
        guard epoch != nil else { return [] }
        epoch = nil
        return [.steppedDown(.resigned)]
    }
}

/// A client's choice among the coordinators it was given (`--coordinator a,b`), as a pure
/// value: which one to try next, and the fencing rule. A coordinator counts only if it says it
/// is the active one under an epoch no older than the newest this client has seen. Given
/// several, one without an election (epoch 0) is refused: two of those would both be active.
/// Only after `staleGrace` seconds of nothing but older epochs (Redis lost its counter and
/// the clocks went back) does it take the older one, rather than stay without any for good.
public struct CoordinatorChoice: Sendable, Equatable {
    public enum Verdict: Sendable, Equatable {
        case accept
        /// A standby, or a coordinator that does not answer `hello`: try the next.
        case notActive
        /// Active by its own account, under an epoch older than one seen before: fenced off.
        case stale(epoch: UInt64, newest: UInt64)
        /// Runs without an election (`--leader-lease-ms` 0) although several were given.
        case unelected
        /// Older than the newest seen, but nothing else for `staleGrace`: taken, and said loudly.
        case acceptOlder(epoch: UInt64, newest: UInt64)
    }

    public let endpoints: [Endpoint]
    public let staleGrace: Double
    public private(set) var index = 0
    public private(set) var newestEpoch: UInt64 = 0
    /// Since when only stale answers came (nil after any accepted one).
    private var staleSince: Double?

    public init(endpoints: [Endpoint], staleGrace: Double = 10) {
        precondition(!endpoints.isEmpty, "at least one coordinator")
        self.endpoints = endpoints
        self.staleGrace = staleGrace
    }

    public var current: Endpoint { endpoints[index] }

    /// The link to `current` failed or ended: the next attempt goes to the next one.
    public mutating func moveOn() {
        index = (index + 1) % endpoints.count
    }

    /// Judges an answer to `hello` (from `current`, or on a link already accepted) at `now`.
    public mutating func judge(epoch: UInt64?, now: Double) -> Verdict {
        guard let epoch else { return .notActive }
        if epoch == 0, endpoints.count > 1 { return .unelected }
        guard epoch >= newestEpoch else {
            let since = staleSince ?? now
            staleSince = since
            guard now - since >= staleGrace else { return .stale(epoch: epoch, newest: newestEpoch) }
            let newest = newestEpoch
            newestEpoch = epoch
            staleSince = nil
            return .acceptOlder(epoch: epoch, newest: newest)
        }
        newestEpoch = epoch
        staleSince = nil
        return .accept
    }
}
