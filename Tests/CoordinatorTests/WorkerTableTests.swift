@testable import Coordinator
import Proto
import Testing

@Suite struct PresenceTests {
    @Test func transitionsOnlyAtZeroAndOne() {
        var p = Presence()
        let steps = [p.add("a"), p.add("a"), p.remove("a"), p.remove("a"), p.remove("a")]
        #expect(steps == [.cameOnline("a"), nil, nil, .wentOffline("a"), nil])
        #expect(p.online.isEmpty)
    }
}

@Suite struct WorkerTableTests {
    func conn(_ id: String, _ user: String) -> ConnectionInfo { ConnectionInfo(id: id, user: user) }

    @Test func routesToLeastLoadedLiveWorker() throws {
        var t = WorkerTable(leaseDuration: 3)
        _ = t.register(worker: "w1", address: "a1", connections: [], now: 0)
        _ = t.register(worker: "w2", address: "a2", connections: [], now: 0)
        let r1 = t.route(excluding: [], now: 1)
        let r2 = t.route(excluding: [], now: 1)
        let first = try #require(r1)
        let second = try #require(r2)
        #expect(first.id != second.id)  // the reservation counts before the connection is reported
        _ = t.opened(worker: first.id, connection: conn("c1", "u"))
        _ = t.opened(worker: first.id, connection: conn("c2", "u"))
        let third = t.route(excluding: [], now: 1)
        #expect(third?.id == second.id)
        let excluded = t.route(excluding: [second.id], now: 1)
        #expect(excluded?.id == first.id)
        t.setRoutable(worker: first.id, false)
        let none = t.route(excluding: [second.id], now: 1)
        #expect(none == nil)
    }

    @Test func leaseLapseDropsWorkerAndItsPresence() {
        var t = WorkerTable(leaseDuration: 3)
        _ = t.register(worker: "w1", address: "a1", connections: [], now: 0)
        _ = t.register(worker: "w2", address: "a2", connections: [], now: 0)
        let opened = [t.opened(worker: "w1", connection: conn("c1", "amy")),
                      t.opened(worker: "w2", connection: conn("c2", "amy")),
                      t.opened(worker: "w1", connection: conn("c3", "bo"))]
        #expect(opened == [[.cameOnline("amy")], [], [.cameOnline("bo")]])
        let renewed = t.heartbeat(worker: "w2", now: 2)
        #expect(renewed)
        let (expired, events) = t.expire(now: 3.5)
        #expect(expired == ["w1"])
        #expect(events == [.wentOffline("bo")])  // amy still has a connection on w2
        #expect(t.presence.online == ["amy"])
        let routed = t.route(excluding: [], now: 3.5)
        #expect(routed?.id == "w2")
        let unknown = t.heartbeat(worker: "w1", now: 4)
        #expect(!unknown)  // it must register again
        let late = t.opened(worker: "w1", connection: conn("c9", "x"))
        #expect(late == nil)
    }

    @Test func reRegistrationAfterRestartRestoresExactPresence() {
        var t = WorkerTable(leaseDuration: 3)
        let events = t.register(worker: "w1", address: "a1", connections: [conn("c1", "amy"), conn("c2", "amy"), conn("c3", "bo")], now: 0)
        #expect(Set(events) == [.cameOnline("amy"), .cameOnline("bo")])
        #expect(t.presence.counts == ["amy": 2, "bo": 1])
        // The same worker registers again with fewer connections: only bo's departure is news.
        let again = t.register(worker: "w1", address: "a1", connections: [conn("c1", "amy")], now: 1)
        #expect(again == [.wentOffline("bo")])
        #expect(t.presence.counts == ["amy": 1])
    }

    @Test func connectionsAreCountedOnce() {
        var t = WorkerTable(leaseDuration: 3)
        _ = t.register(worker: "w1", address: "a1", connections: [], now: 0)
        let steps = [t.closed(worker: "w1", connection: conn("nope", "x")),
                     t.opened(worker: "w1", connection: conn("c1", "x")),
                     t.opened(worker: "w1", connection: conn("c1", "x")),
                     t.closed(worker: "w1", connection: conn("c1", "x"))]
        #expect(steps == [[], [.cameOnline("x")], [], [.wentOffline("x")]])
    }

    @Test func aUserIsCappedAcrossWorkers() {
        var t = WorkerTable(leaseDuration: 3, maxPerUser: 2)
        _ = t.register(worker: "w1", address: "a1", connections: [], now: 0)
        _ = t.register(worker: "w2", address: "a2", connections: [], now: 0)
        #expect(t.mayOpen(worker: "w1", connection: conn("c1", "amy")))
        _ = t.opened(worker: "w1", connection: conn("c1", "amy"))
        _ = t.opened(worker: "w2", connection: conn("c2", "amy"))
        #expect(!t.mayOpen(worker: "w1", connection: conn("c3", "amy")), "a third, on either worker, is refused")
        #expect(!t.mayOpen(worker: "w2", connection: conn("c3", "amy")))
        #expect(t.mayOpen(worker: "w1", connection: conn("c1", "amy")), "one already counted is no new one")
        #expect(t.mayOpen(worker: "w1", connection: conn("c4", "bo")), "others are not affected")
        _ = t.closed(worker: "w2", connection: conn("c2", "amy"))
        #expect(t.mayOpen(worker: "w1", connection: conn("c3", "amy")), "a place freed is a place")
    }
}
