import Histogram

/// Microsecond latencies up to 60 s with 3 significant digits.
struct HistogramBox: Sendable {
    private var h = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)

    mutating func record(_ micros: UInt64) { _ = h.record(min(micros, 60_000_000)) }
    mutating func merge(_ other: HistogramBox) { h.add(other.h) }
    var count: UInt64 { h.totalCount }
    func percentile(_ p: Double) -> UInt64 { h.totalCount == 0 ? 0 : h.valueAtPercentile(p) }
}
