/// A Redis stream id, `"<ms>-<seq>"`, compared as a pair of integers.
public struct MessageID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var ms: UInt64
    public var seq: UInt64

    public init(ms: UInt64, seq: UInt64) {
        self.ms = ms
        self.seq = seq
    }

    /// Parses `"<ms>-<seq>"`, or `"<ms>"` (sequence 0). Returns nil for anything else.
    public init?(_ text: String) {
        guard !text.isEmpty, text.utf8.count <= 41 else { return nil }
        let parts = text.split(separator: "-", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count <= 2,
              parts.allSatisfy({ !$0.isEmpty && $0.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 } }),
              let ms = UInt64(parts[0]) else { return nil }
        var seq: UInt64 = 0
        if parts.count == 2 {
            guard let s = UInt64(parts[1]) else { return nil }
            seq = s
        }
        self.ms = ms
        self.seq = seq
    }

    public static let zero = MessageID(ms: 0, seq: 0)

    public var description: String { "\(ms)-\(seq)" }

    public static func < (lhs: MessageID, rhs: MessageID) -> Bool {
        (lhs.ms, lhs.seq) < (rhs.ms, rhs.seq)
    }
}
