/// Counts live connections per user across all workers. Transitions 0→1 and
/// 1→0 are what clients see as `presence` events.
struct Presence: Sendable {
    private(set) var counts: [String: Int] = [:]

    enum Transition: Hashable { case cameOnline(String), wentOffline(String) }

    mutating func add(_ user: String) -> Transition? {
        let n = counts[user, default: 0] + 1
        counts[user] = n
        return n == 1 ? .cameOnline(user) : nil
    }

    mutating func remove(_ user: String) -> Transition? {
        guard let n = counts[user] else { return nil }
        if n <= 1 {
            counts.removeValue(forKey: user)
            return .wentOffline(user)
        }
        counts[user] = n - 1
        return nil
    }

    var online: [String] { counts.keys.sorted() }
}
