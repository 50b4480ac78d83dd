import Logging
import Testing

@testable import ChatCore

/// The log line format: StreamLogHandler's, with UTC milliseconds.
@Suite struct LineLogHandlerTests {
    @Test func aLineHasTheTimeToTheMillisecondInUTC() {
        // 1796181500 s after the epoch is 2026-12-02T03:18:20Z.
        let line = LineLogHandler.line(epochSeconds: 1_796_181_500, millisecond: 7, level: .warning, label: "securechat.worker",
                                       metadata: ["worker.id": "worker-1", "error": "redis unavailable"], source: "Worker",
                                       message: "request failed")
        #expect(line == "2026-12-02T03:18:20.007Z warning securechat.worker: error=redis unavailable worker.id=worker-1 [Worker] request failed\n")
    }

    @Test func noMetadataLeavesNoGap() {
        let line = LineLogHandler.line(epochSeconds: 0, millisecond: 999, level: .info, label: "x", metadata: [:], source: "S", message: "m")
        #expect(line == "1970-01-01T00:00:00.999Z info x: [S] m\n")
    }

    @Test func anEmptyLabelLeavesNoSpace() {
        let line = LineLogHandler.line(epochSeconds: 0, millisecond: 0, level: .error, label: "", metadata: [:], source: "S", message: "m")
        #expect(line == "1970-01-01T00:00:00.000Z error: [S] m\n")
    }

    @Test func theMillisecondStaysInRange() {
        #expect(LineLogHandler.timestamp(epochSeconds: 0, millisecond: 1_500) == "1970-01-01T00:00:00.999Z")
        #expect(LineLogHandler.timestamp(epochSeconds: 0, millisecond: -3) == "1970-01-01T00:00:00.000Z")
    }
}
