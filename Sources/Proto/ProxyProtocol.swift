import NIOCore

/// The PROXY protocol header (HAProxy's, versions 1 and 2) that an L4 load balancer puts in
/// front of a connection to name the client it came from. Parsing only: no I/O.
public enum ProxyHeader: Equatable, Sendable {
    /// More bytes are needed.
    case incomplete
    /// Not a valid header: the connection must be closed.
    case invalid
    /// A header of `length` bytes. `client` is the original source address and port, or nil
    /// when the balancer speaks for itself (v1 `UNKNOWN`, v2 `LOCAL`, or a family we do not
    /// route, such as a Unix socket): then the connection's own peer counts.
    case header(length: Int, client: (host: String, port: Int)?)

    public static func == (a: ProxyHeader, b: ProxyHeader) -> Bool {
        switch (a, b) {
        case (.incomplete, .incomplete), (.invalid, .invalid): return true
        case let (.header(l1, c1), .header(l2, c2)): return l1 == l2 && c1?.host == c2?.host && c1?.port == c2?.port
        default: return false
        }
    }

    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    static let v1Prefix = Array("PROXY ".utf8)
    /// v1 headers are at most 107 bytes, CRLF included; v2 address blocks we accept at most 512.
    static let v1MaxLength = 107
    static let v2MaxBlock = 512

    /// Parses the start of a connection's bytes.
    public static func parse(_ bytes: some Collection<UInt8>) -> ProxyHeader {
        let b = Array(bytes.prefix(16 + v2MaxBlock))
        if b.count < 6 {
            return (v1Prefix.starts(with: b) || v2Signature.starts(with: b)) ? .incomplete : .invalid
        }
        if b.starts(with: v1Prefix) { return parseV1(b) }
        if v2Signature.starts(with: b.prefix(12)) { return b.count < 16 ? .incomplete : parseV2(b) }
        return .invalid
    }

    private static func parseV1(_ b: [UInt8]) -> ProxyHeader {
        // A line feed before the CR (or none within the bound) is not a v1 header.
        guard let cr = b.firstIndex(of: 0x0D) else {
            return b.count >= v1MaxLength || b.contains(0x0A) ? .invalid : .incomplete
        }
        guard !b[0..<cr].contains(0x0A) else { return .invalid }
        guard cr + 1 < b.count else { return .incomplete }
        guard b[cr + 1] == 0x0A, cr + 2 <= v1MaxLength, let line = String(validating: b[0..<cr], as: UTF8.self) else { return .invalid }
        let parts = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        if parts.count >= 2, parts[1] == "UNKNOWN" { return .header(length: cr + 2, client: nil) }
        guard parts.count == 6, parts[1] == "TCP4" || parts[1] == "TCP6",
              let sport = Int(parts[4]), (0...65535).contains(sport), Int(parts[5]).map({ (0...65535).contains($0) }) == true,
              let address = try? SocketAddress(ipAddress: parts[2], port: sport),
              (parts[1] == "TCP4") == (address.protocol == .inet),
              (try? SocketAddress(ipAddress: parts[3], port: 0)) != nil else { return .invalid }
        return .header(length: cr + 2, client: (parts[2], sport))
    }

    private static func parseV2(_ b: [UInt8]) -> ProxyHeader {
        let versionCommand = b[12], family = b[13]
        let blockLength = Int(b[14]) << 8 | Int(b[15])
        guard versionCommand >> 4 == 2, blockLength <= v2MaxBlock else { return .invalid }
        let total = 16 + blockLength
        guard b.count >= total else { return .incomplete }
        switch versionCommand & 0x0F {
        case 0x0: return .header(length: total, client: nil)          // LOCAL: the balancer itself
        case 0x1: break                                               // PROXY
        default: return .invalid
        }
        let block = b[16..<total]
        switch family {
        case 0x11, 0x12:  // TCP or UDP over IPv4: src(4) dst(4) sport(2) dport(2)
            guard block.count >= 12 else { return .invalid }
            let s = Array(block.prefix(4))
            let port = Int(block[block.startIndex + 8]) << 8 | Int(block[block.startIndex + 9])
            return .header(length: total, client: ("\(s[0]).\(s[1]).\(s[2]).\(s[3])", port))
        case 0x21, 0x22:  // over IPv6: src(16) dst(16) sport(2) dport(2)
            guard block.count >= 36 else { return .invalid }
            let s = Array(block.prefix(16))
            let host = stride(from: 0, to: 16, by: 2).map { String(UInt16(s[$0]) << 8 | UInt16(s[$0 + 1]), radix: 16) }.joined(separator: ":")
            let port = Int(block[block.startIndex + 32]) << 8 | Int(block[block.startIndex + 33])
            return .header(length: total, client: (host, port))
        default:
            return .header(length: total, client: nil)  // UNSPEC, Unix: the peer counts
        }
    }
}
