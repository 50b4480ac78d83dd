import NIOCore

/// The key per-address limits count a client under: an IPv4 address as it is, an IPv6
/// address by its /64 (one subscriber's network: a host can choose among 2^64 addresses
/// of its /64, so counting single addresses would not limit it at all). IPv4-mapped IPv6
/// addresses count as the IPv4 address.
public enum ClientAddress {
    public static func rateKey(_ address: SocketAddress?) -> String {
        guard let address else { return "unknown" }
        switch address {
        case .v4:
            return address.ipAddress ?? "unknown"
        case let .v6(a):
            var raw = a.address.sin6_addr
            let bytes = withUnsafeBytes(of: &raw) { Array($0) }
            return rateKey(ipv6: bytes) ?? address.ipAddress ?? "unknown"
        default:
            return "unix"
        }
    }

    /// The key of 16 IPv6 address bytes: `a.b.c.d` when IPv4-mapped, else the /64 as `x:x:x:x::/64`.
    public static func rateKey(ipv6 bytes: [UInt8]) -> String? {
        guard bytes.count == 16 else { return nil }
        if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF {
            return "\(bytes[12]).\(bytes[13]).\(bytes[14]).\(bytes[15])"
        }
        let groups = stride(from: 0, to: 8, by: 2).map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }
        return groups.joined(separator: ":") + "::/64"
    }
}
