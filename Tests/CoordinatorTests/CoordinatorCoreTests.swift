import ChatCore
import Foundation
@testable import Coordinator
import Logging
import NIOEmbedded
import Proto
import Testing

/// The coordinator's terms as the election drives them (activate, deactivate), with the rate
/// limits each term starts from. The core reads its own clock; every step here is far shorter
/// than any refill (a cell a second for messages, one in 12 s for a name's logins).
@Suite struct CoordinatorCoreTests {
    func core() -> CoordinatorCore {
        CoordinatorCore(limits: RateLimits(), leaseDuration: 3, settle: 1, secret: nil, logger: Logger(label: "test"), elected: true)
    }

    func spend(_ core: CoordinatorCore, _ kind: RateLimitKind, _ key: String, _ link: EmbeddedChannel) -> Bool {
        core.handle(.rateCheck(kind: kind, key: key, consume: true), link: link) == .rate(allowed: true, retryAfterMs: 0)
    }

    @Test func aStandbyAnswersNothingButStandby() {
        let c = core()
        let link = EmbeddedChannel()
        #expect(c.handle(.hello, link: link) == .standby)
        #expect(c.handle(.rateCheck(kind: .message, key: "u", consume: true), link: link) == .standby)
        c.activate(epoch: 7, until: CoordinatorCore.now() + 60)
        #expect(c.handle(.hello, link: link) == .leader(epoch: 7))
        c.deactivate(reason: "test")
        #expect(c.handle(.hello, link: link) == .standby)
        // Past its lease by its own clock, it answers standby before any step-down is run.
        c.activate(epoch: 8, until: CoordinatorCore.now() - 0.001)
        #expect(c.handle(.hello, link: link) == .standby)
    }

    @Test func theSameTermBackContinuesItsLimitsAndANewOneStartsThemSpent() {
        let c = core()
        let link = EmbeddedChannel()
        c.activate(epoch: 5, until: CoordinatorCore.now() + 60)
        #expect((0..<5).map { _ in spend(c, .message, "amy", link) } == [true, true, true, true, true])
        #expect(!spend(c, .message, "amy", link))
        // Stepped down by its own clock, then the lease turned out to be still its own.
        c.deactivate(reason: "test")
        c.activate(epoch: 5, until: CoordinatorCore.now() + 60)
        #expect(!spend(c, .message, "amy", link))      // not a fresh burst
        #expect(spend(c, .message, "bo", link))        // others as they were
        // A new term after another coordinator served: every burst counts as spent.
        c.deactivate(reason: "test")
        c.activate(epoch: 9, until: CoordinatorCore.now() + 60, predecessor: Date().timeIntervalSince1970)
        #expect(!spend(c, .message, "cy", link))
    }

    @Test func loginLimitsCarryOverThroughRedisAndFreshStartsAreFull() {
        let old = core()
        let link = EmbeddedChannel()
        old.activate(epoch: 1, until: CoordinatorCore.now() + 60)
        #expect((0..<5).map { _ in spend(old, .loginUser, "eve|10.0.0.9", link) } == [true, true, true, true, true])
        let written = old.takeDirty()
        #expect(written.map(\.key) == ["loginUser:eve|10.0.0.9"])
        #expect(old.takeDirty().isEmpty)  // taken off the list
        // The successor reads what was written: eve stays refused, and logins are not spent.
        let new = core()
        new.activate(epoch: 2, until: CoordinatorCore.now() + 60, predecessor: Date().timeIntervalSince1970, carried: written)
        #expect(!spend(new, .loginUser, "eve|10.0.0.9", link))
        #expect(spend(new, .loginUser, "ann|10.0.0.9", link))
        // A cold start (no coordinator active lately): everything full.
        let cold = core()
        cold.activate(epoch: 3, until: CoordinatorCore.now() + 60)
        #expect(spend(cold, .message, "amy", link))
    }
}
