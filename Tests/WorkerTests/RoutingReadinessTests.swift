import Testing

@testable import Worker

/// When a worker is routed new streams, on a fake clock.
@Suite struct RoutingReadinessTests {
    @Test func registersOnlyOnceRelayingAndTheStoreAreBothUp() {
        var r = RoutingReadiness()
        #expect(r.nextStep(relaying: false, store: true, nowMs: 0) == .wait)
        // After a Redis restart the subscription can be back before a command connection.
        #expect(r.nextStep(relaying: true, store: false, nowMs: 50) == .wait)
        #expect(r.nextStep(relaying: true, store: false, nowMs: 2_000) == .wait)
        #expect(r.nextStep(relaying: true, store: true, nowMs: 2_050) == .register)
        #expect(r.nextStep(relaying: true, store: true, nowMs: 2_100) == .heartbeat)
    }

    @Test func losingTheSubscriptionUnroutesAtOnce() {
        var r = RoutingReadiness()
        #expect(r.nextStep(relaying: true, store: true, nowMs: 0) == .register)
        #expect(r.nextStep(relaying: false, store: true, nowMs: 50) == .unroute)
        let ready1 = r.ready(relaying: false, store: true, nowMs: 60)
        #expect(!ready1)
        #expect(r.nextStep(relaying: false, store: true, nowMs: 100) == .heartbeat)
        #expect(r.nextStep(relaying: true, store: true, nowMs: 150) == .register)
    }

    @Test func aShortStoreBlipDoesNotUnroute() {
        var r = RoutingReadiness()
        #expect(r.nextStep(relaying: true, store: true, nowMs: 0) == .register)
        #expect(r.nextStep(relaying: true, store: false, nowMs: 1_000) == .heartbeat)
        let ready2 = r.ready(relaying: true, store: false, nowMs: 1_400)
        #expect(ready2)
        #expect(r.nextStep(relaying: true, store: true, nowMs: 1_450) == .heartbeat)
        // A new outage starts its own grace.
        #expect(r.nextStep(relaying: true, store: false, nowMs: 5_000) == .heartbeat)
        #expect(r.nextStep(relaying: true, store: false, nowMs: 5_499) == .heartbeat)
    }

    @Test func aStoreDownPastTheGraceUnroutesUntilItIsBack() {
        var r = RoutingReadiness()
        #expect(r.nextStep(relaying: true, store: true, nowMs: 0) == .register)
        #expect(r.nextStep(relaying: true, store: false, nowMs: 100) == .heartbeat)
        #expect(r.nextStep(relaying: true, store: false, nowMs: 100 + RoutingReadiness.graceMs) == .unroute)
        let ready3 = r.ready(relaying: true, store: false, nowMs: 700)
        #expect(!ready3)
        #expect(r.nextStep(relaying: true, store: false, nowMs: 5_000) == .heartbeat)
        #expect(r.nextStep(relaying: true, store: true, nowMs: 5_050) == .register)
    }

    @Test func anUnrouteTheCoordinatorDidNotConfirmIsSentAgain() {
        var r = RoutingReadiness()
        #expect(r.nextStep(relaying: true, store: true, nowMs: 0) == .register)
        #expect(r.nextStep(relaying: false, store: true, nowMs: 50) == .unroute)
        r.unrouteFailed()
        #expect(r.nextStep(relaying: false, store: true, nowMs: 100) == .unroute)
        #expect(r.nextStep(relaying: false, store: true, nowMs: 150) == .heartbeat)
    }

    @Test func aFailedCallOrANewCoordinatorLinkRegistersAgain() {
        var r = RoutingReadiness()
        #expect(r.nextStep(relaying: true, store: true, nowMs: 0) == .register)
        r.failed()
        #expect(r.nextStep(relaying: true, store: true, nowMs: 50) == .register)
        r.failed()
        #expect(r.nextStep(relaying: false, store: true, nowMs: 100) == .wait)
    }
}
