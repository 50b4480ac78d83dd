import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Proto

/// Asks the coordinator for global rate decisions; while it cannot be reached,
/// decides locally with the same parameters (logged once per outage, counted).
/// Every cell the coordinator allows through this process is also recorded locally, so a
/// fallback starts from what this process has let through, not from full buckets: a user
/// whose connections are all here keeps exactly their limit while coordinators change.
public final class RateLimiterClient: Sendable {
    private let link: CoordinatorLink
    private let logger: Logger
    private let local: NIOLockedValueBox<(gcra: GCRA, fallingBack: Bool, fallbacks: Int, recorded: Int)>

    public init(link: CoordinatorLink, limits: RateLimits, logger: Logger) {
        self.link = link
        self.logger = logger
        self.local = NIOLockedValueBox((GCRA(limits: limits), false, 0, 0))
    }

    /// Number of decisions taken locally so far.
    public var fallbackCount: Int { local.withLockedValue { $0.fallbacks } }

    /// One global decision (spending a cell when `consume`), completed on `eventLoop`; decided
    /// locally when the coordinator does not answer.
    public func check(_ kind: RateLimitKind, key: String, consume: Bool = true, on eventLoop: EventLoop) -> EventLoopFuture<GCRA.Decision> {
        link.callFuture(.rateCheck(kind: kind, key: key, consume: consume)).hop(to: eventLoop).flatMapThrowing { response in
            guard case let .rate(allowed, retryAfterMs) = response else { throw CoordinatorUnavailable() }
            self.restored(recording: allowed && consume ? (kind, key) : nil)
            return GCRA.Decision(allowed: allowed, retryAfter: Double(retryAfterMs) / 1000)
        }.flatMapErrorThrowing { _ in
            self.decideLocally(kind, key: key, consume: consume)
        }
    }

    /// Gives back a cell that `decision` took, where it was taken (fire and forget).
    public func refund(_ kind: RateLimitKind, key: String, taken decision: GCRA.Decision) {
        guard decision.allowed else { return }
        if decision.local {
            let now = Date().timeIntervalSince1970
            local.withLockedValue { $0.gcra.refund(kind: kind, key: key, now: now) }
        } else {
            link.callFuture(.rateRefund(kind: kind, key: key)).whenComplete { _ in }
            // The shadow recorded the cell too.
            let now = Date().timeIntervalSince1970
            local.withLockedValue { $0.gcra.refund(kind: kind, key: key, now: now) }
        }
    }

    private func restored(recording spent: (RateLimitKind, String)?) {
        let now = Date().timeIntervalSince1970
        let wasFallingBack = local.withLockedValue { s -> Bool in
            defer { s.fallingBack = false }
            if let (kind, key) = spent {
                s.gcra.record(kind: kind, key: key, now: now)
                // Spent cells drop out once refilled; pruning now and then bounds the shadow.
                s.recorded += 1
                if s.recorded % 10_000 == 0, s.gcra.keyCount > 100_000 { s.gcra.prune(now: now) }
            }
            return s.fallingBack
        }
        if wasFallingBack { logger.info("coordinator back; global rate limits restored") }
    }

    private func decideLocally(_ kind: RateLimitKind, key: String, consume: Bool) -> GCRA.Decision {
        let now = Date().timeIntervalSince1970
        let (decision, first) = local.withLockedValue { s -> (GCRA.Decision, Bool) in
            let first = !s.fallingBack
            s.fallingBack = true
            s.fallbacks += 1
            var d = s.gcra.check(kind: kind, key: key, now: now, consume: consume)
            d.local = true
            return (d, first)
        }
        if first { logger.warning("coordinator unreachable; rate limits decided locally until it is back") }
        return decision
    }


}
