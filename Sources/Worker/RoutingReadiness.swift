/// Whether this worker should be routed new streams, and what to tell the coordinator next,
/// as a plain value on a caller's clock (milliseconds of any monotonic origin).
///
/// Ready means relaying (the Redis subscription live and any gap filled) and the command
/// connections up and past their handshake: a new stream's session check and welcome need
/// them, and after a Redis restart the subscription can be back a second or two before a
/// command connection's backoff brings it back.
///
/// Relaying lost takes the worker out of routing at once (live relay would be missing). A
/// command connection that is down takes it out only once it has been down for `graceMs`:
/// a blip (one command timeout, a `READONLY` that moves the connection) is covered by the
/// reads and messages being held (`StoreHold`), and must not cost an unregister and a full
/// re-register each time. Coming back needs both, really up.
struct RoutingReadiness: Sendable, Equatable {
    enum Step: Equatable { case register, unroute, heartbeat, wait }

    static let graceMs = 500

    private(set) var registered = false
    private(set) var routable = false
    private var storeDownSinceMs: Int?

    /// Whether a new stream should come here now.
    mutating func ready(relaying: Bool, store: Bool, nowMs: Int) -> Bool {
        if store {
            storeDownSinceMs = nil
        } else if storeDownSinceMs == nil {
            storeDownSinceMs = nowMs
        }
        guard relaying else { return false }
        if store { return true }
        // Down: still ready only if it was routable and the gap is short.
        return routable && nowMs - (storeDownSinceMs ?? nowMs) < Self.graceMs
    }

    /// What to tell the coordinator next; assumes it succeeds (call `failed()` if not).
    mutating func nextStep(relaying: Bool, store: Bool, nowMs: Int) -> Step {
        let ready = ready(relaying: relaying, store: store, nowMs: nowMs)
        if ready && (!registered || !routable) {
            registered = true
            routable = true
            return .register
        }
        if !ready && registered && routable {
            routable = false
            return .unroute
        }
        return registered ? .heartbeat : .wait
    }

    /// After a (re)connection to the coordinator, or a call that failed: register again.
    mutating func failed() {
        registered = false
        routable = false
    }

    /// An unroute the coordinator did not confirm (the link stays up): send it again next,
    /// else the worker would go on being routed new streams it cannot serve.
    mutating func unrouteFailed() {
        routable = true
    }
}
