import Proto

/// Workers, their leases and connections, presence, and routing of new
/// streams: a pure state machine. Every mutation returns the presence
/// transitions it caused; the server around it publishes them.
struct WorkerTable: Sendable {
    struct Worker: Sendable {
        var address: String
        var leaseExpiry: Double
        var connections: [String: String] = [:]
        /// Streams routed here whose connection has not been reported yet.
        var reserved = 0
        /// Draining or link lost: takes no new streams.
        var routable = true
        var load: Int { connections.count + reserved }
    }

    let leaseDuration: Double
    /// Connections one user may have open at once, over all workers.
    let maxPerUser: Int
    private(set) var workers: [String: Worker] = [:]
    private(set) var presence = Presence()

    init(leaseDuration: Double, maxPerUser: Int = .max) {
        self.leaseDuration = leaseDuration
        self.maxPerUser = max(1, maxPerUser)
    }

    /// Whether `connection` may be counted: already counted, or its user is under the cap.
    func mayOpen(worker id: String, connection: ConnectionInfo) -> Bool {
        if workers[id]?.connections[connection.id] != nil { return true }
        return presence.counts[connection.user, default: 0] < maxPerUser
    }

    /// A worker (re)registers with its full list of connections; replaces whatever was known of it.
    mutating func register(worker id: String, address: String, connections: [ConnectionInfo], now: Double) -> [Presence.Transition] {
        var events = drop(worker: id)
        var w = Worker(address: address, leaseExpiry: now + leaseDuration)
        for c in connections {
            w.connections[c.id] = c.user
            if let e = presence.add(c.user) { events.append(e) }
        }
        workers[id] = w
        return collapse(events)
    }

    /// Renews a lease; false when the worker is unknown (it should register again).
    mutating func heartbeat(worker id: String, now: Double) -> Bool {
        guard workers[id] != nil else { return false }
        workers[id]!.leaseExpiry = now + leaseDuration
        workers[id]!.reserved = 0
        return true
    }

    /// Stops routing to a worker (drain, or its link closed); it stays until its lease lapses.
    mutating func setRoutable(worker id: String, _ routable: Bool) {
        workers[id]?.routable = routable
    }

    mutating func opened(worker id: String, connection: ConnectionInfo) -> [Presence.Transition]? {
        guard workers[id] != nil else { return nil }
        workers[id]!.reserved = max(0, workers[id]!.reserved - 1)
        guard workers[id]!.connections.updateValue(connection.user, forKey: connection.id) == nil else { return [] }
        return presence.add(connection.user).map { [$0] } ?? []
    }

    mutating func closed(worker id: String, connection: ConnectionInfo) -> [Presence.Transition]? {
        guard workers[id] != nil else { return nil }
        guard let user = workers[id]!.connections.removeValue(forKey: connection.id) else { return [] }
        return presence.remove(user).map { [$0] } ?? []
    }

    /// Drops every worker whose lease has lapsed, with its connections.
    mutating func expire(now: Double) -> (expired: [String], events: [Presence.Transition]) {
        let dead = workers.filter { $0.value.leaseExpiry < now }.map(\.key).sorted()
        var events: [Presence.Transition] = []
        for id in dead { events += drop(worker: id) }
        return (dead, collapse(events))
    }

    /// The live, routable worker with the least load; reserves one stream on it.
    mutating func route(excluding: Set<String>, now: Double) -> (id: String, address: String)? {
        let candidates = workers.filter { $0.value.routable && $0.value.leaseExpiry >= now && !excluding.contains($0.key) }
        guard let best = candidates.min(by: { ($0.value.load, $0.key) < ($1.value.load, $1.key) }) else { return nil }
        workers[best.key]!.reserved += 1
        return (best.key, best.value.address)
    }

    var liveWorkerCount: Int { workers.values.filter(\.routable).count }

    func routableWorkers(now: Double) -> [WorkerInfo] {
        workers.filter { $0.value.routable && $0.value.leaseExpiry >= now }
            .map { WorkerInfo(id: $0.key, address: $0.value.address, load: $0.value.load) }
            .sorted { $0.id < $1.id }
    }

    private mutating func drop(worker id: String) -> [Presence.Transition] {
        guard let old = workers.removeValue(forKey: id) else { return [] }
        return old.connections.values.compactMap { presence.remove($0) }
    }

    /// A user that went offline and online again within one step saw no change.
    private func collapse(_ events: [Presence.Transition]) -> [Presence.Transition] {
        var net: [String: Int] = [:]
        var order: [String] = []
        for e in events {
            switch e {
            case let .cameOnline(u): if net[u] == nil { order.append(u) }; net[u, default: 0] += 1
            case let .wentOffline(u): if net[u] == nil { order.append(u) }; net[u, default: 0] -= 1
            }
        }
        return order.compactMap { u in
            switch net[u]! {
            case 1...: return .cameOnline(u)
            case ..<0: return .wentOffline(u)
            default: return nil
            }
        }
    }
}
