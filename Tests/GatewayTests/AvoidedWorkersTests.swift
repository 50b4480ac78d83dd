import XCTest

@testable import Gateway

/// New streams skip a worker whose link just died, for 3 s of a fake clock, then try it again.
final class AvoidedWorkersTests: XCTestCase {
    func testALostLinkIsAvoidedForThreeSecondsThenForgotten() {
        var a = AvoidedWorkers()
        let t0: UInt64 = 1_000_000_000_000
        XCTAssertFalse(a.avoids("w1", nowNs: t0))
        a.linkLost("w1", nowNs: t0)
        XCTAssertTrue(a.avoids("w1", nowNs: t0))
        XCTAssertTrue(a.avoids("w1", nowNs: t0 + AvoidedWorkers.holdNs - 1))
        XCTAssertFalse(a.avoids("w2", nowNs: t0 + 1), "other workers are not affected")
        XCTAssertFalse(a.avoids("w1", nowNs: t0 + AvoidedWorkers.holdNs))
        XCTAssertEqual(a.count, 0, "an expired entry is forgotten")
    }

    func testLosingTheLinkAgainRestartsTheHold() {
        var a = AvoidedWorkers()
        let t0: UInt64 = 5_000_000_000
        a.linkLost("w1", nowNs: t0)
        a.linkLost("w1", nowNs: t0 + 2_000_000_000)
        XCTAssertTrue(a.avoids("w1", nowNs: t0 + 4_000_000_000))
        XCTAssertFalse(a.avoids("w1", nowNs: t0 + 5_000_000_000))
    }
}
