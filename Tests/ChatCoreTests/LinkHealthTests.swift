import ChatCore
import Testing

/// What the one reconnect loop says about a link: once per outage, once when it is back.
@Suite struct LinkHealthTests {
    @Test func firstConnectSaysNothing() {
        var h = LinkHealth()
        #expect(h.connected() == nil)
    }

    @Test func repeatedFailuresAreReportedOnce() {
        var h = LinkHealth()
        #expect(h.failed() == .unreachable)
        #expect(h.failed() == nil)
        #expect(h.failed() == nil)
        #expect(h.connected() == .reconnected)
        #expect(h.connected() == nil)
    }

    @Test func aLostLinkIsReportedThenItsRetriesAreQuiet() {
        var h = LinkHealth()
        _ = h.connected()
        #expect(h.lost() == .lost)
        #expect(h.failed() == nil)
        #expect(h.connected() == .reconnected)
    }
}
