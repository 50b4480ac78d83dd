/// A message whose store step failed for a reason that passes (no connection to Redis while
/// it fails over or restarts, no reply, a primary just demoted or still loading) is tried
/// again by the worker for up to `holdMs`, rather than answered `unavailable` at once.
/// A Redis failover of a few seconds then shows as a slow `ack`, not an error that the user
/// must act on.
///
/// Only a message with a `ref` is held: the store step answers a ref it has seen with the
/// first id, so a try that did reach Redis before its connection went is not stored twice.
/// Reads (`read(holdMs:startedMs:)`) are always held: repeating one changes nothing.
/// Tries are spaced about 50, 100, 200, 400, then 500 ms apart, each step 50–100 % of that at
/// random (streams that failed at the same moment do not all come back at the same moment),
/// the last one at the end of the hold. A try while there is no connection fails at once and
/// costs nothing but the timer. None is started past the hold; one under way is not cut short
/// (it has its own 5 s command timeout), so a message waits at most the hold and one timeout.
///
/// A plain value on a caller's clock, in milliseconds of any monotonic origin.
struct StoreHold: Sendable, Equatable {
    /// How long a message may be held, from its first try; 0: never held.
    let holdMs: Int
    let startedMs: Int
    private(set) var tries = 1

    static let firstStepMs = 50
    static let maxStepMs = 500

    enum Decision: Equatable {
        /// Try again this many ms from now.
        case again(afterMs: Int)
        /// Answer with the failure.
        case answer
    }

    init(holdMs: Int, startedMs: Int, hasRef: Bool) {
        self.holdMs = hasRef ? max(0, holdMs) : 0
        self.startedMs = startedMs
    }

    /// A read (a session, a welcome, a replay page): repeating one is always safe, so it is
    /// held as a message with a ref is.
    static func read(holdMs: Int, startedMs: Int) -> StoreHold {
        StoreHold(holdMs: holdMs, startedMs: startedMs, hasRef: true)
    }

    /// A try failed; `transient` says whether waiting could help; `random` is in 0...1.
    mutating func failed(transient: Bool, nowMs: Int, random: Double = Double.random(in: 0...1)) -> Decision {
        let remaining = holdMs - (nowMs - startedMs)
        guard transient, remaining > 0 else { return .answer }
        let full = min(Self.maxStepMs, Self.firstStepMs << min(tries - 1, 4))
        let step = min(max(1, Int((Double(full) * (0.5 + 0.5 * min(1, max(0, random)))).rounded())), remaining)
        tries += 1
        return .again(afterMs: step)
    }
}
