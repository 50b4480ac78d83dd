import Proto

/// The gateway–worker link handshake: each side proves it holds the cluster secret by
/// an HMAC over both sides' fresh nonces, so the secret never crosses the link and a
/// recorded handshake cannot be replayed (the other side's nonce is new every time).
///
/// Without a secret (one machine, where the sockets sit in a directory only the service's
/// user can open) the proofs are HMACs under an empty key: the handshake still runs, and
/// checks the protocol version.
public struct LinkAuth: Sendable {
    private let key: [UInt8]

    public init(secret: String?) {
        key = Array((secret ?? "").utf8)
    }

    public static func nonce() throws -> [UInt8] { try Crypto.randomBytes(LinkFrame.nonceBytes) }

    /// What the worker sends in `challenge`.
    public func workerProof(gatewayNonce: [UInt8], workerNonce: [UInt8]) -> [UInt8] {
        Crypto.hmacSHA256(key: key, Array("securechat-link worker".utf8) + gatewayNonce + workerNonce)
    }

    /// What the gateway sends in `proof`.
    public func gatewayProof(gatewayNonce: [UInt8], workerNonce: [UInt8]) -> [UInt8] {
        Crypto.hmacSHA256(key: key, Array("securechat-link gateway".utf8) + gatewayNonce + workerNonce)
    }

    public func verify(_ proof: [UInt8], expected: [UInt8]) -> Bool {
        Crypto.constantTimeEqual(proof, expected)
    }
}
