import ServiceLifecycle

/// Exponential backoff with full jitter, as a pure value: each failure asks
/// for the next delay, a success resets it.
public struct Backoff: Sendable {
    public var base: Double
    public var cap: Double
    public private(set) var attempt = 0

    public init(base: Double = 0.1, cap: Double = 5) {
        self.base = base
        self.cap = cap
    }

    /// The delay in seconds before the next attempt; `random` is in 0..<1.
    public mutating func next(random: Double = Double.random(in: 0..<1)) -> Double {
        let ceiling = min(cap, base * Double(1 << min(attempt, 20)))
        attempt += 1
        return ceiling / 2 + ceiling / 2 * random
    }

    public mutating func reset() { attempt = 0 }
}

extension Backoff {
    /// Sleeps for the next delay; returns false when the task was cancelled.
    public mutating func sleep() async -> Bool {
        let seconds = next()
        do {
            try await Task.sleep(nanoseconds: UInt64(seconds * 1_000_000_000))
            return true
        } catch {
            return false
        }
    }
}

/// Sleeps up to `seconds`, waking early on cancellation or graceful shutdown.
public func sleepUnlessShuttingDown(seconds: Double) async {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline && !Task.isCancelled && !Task.isShuttingDownGracefully {
        try? await Task.sleep(for: .milliseconds(50))
    }
}
