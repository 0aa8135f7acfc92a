//! The OpenAPI 3 description served at `/api/openapi.json`, written by hand to match the
//! hermes-proto bodies exactly (schemathesis checks every answer against it in `make test`).

use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } }
    })
}

fn retry_response(description: &str) -> Value {
    json!({
        "description": description,
        "headers": { "Retry-After": { "$ref": "#/components/headers/RetryAfter" } },
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } }
    })
}

fn ok(schema: &str, description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    })
}

/// The document as JSON.
pub fn document() -> Value {
    let too_many = retry_response(
        "Rate limit exceeded (60/min per IP on /api; resolve also 40 per IP and 25 per code per 5 min)",
    );
    let unavailable = retry_response("State store unreachable; retry later");
    let unauthorized = error_response("Missing, invalid or expired join token");
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Hermes API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Calls, one-time codes, join tokens and TURN credentials for Hermes 1:1 video calls. Every error body is {\"error\":{\"code\",\"message\"}}."
        },
        "paths": {
            "/api/call/create": {
                "post": {
                    "operationId": "createCall",
                    "summary": "Create a call: a one-time code (15 min, single use) and the creator's join token (offerer)",
                    "responses": {
                        "201": ok("CreateCallResponse", "Call created"),
                        "413": error_response("Body too large"),
                        "429": too_many,
                        "503": unavailable
                    }
                }
            },
            "/api/call/resolve": {
                "post": {
                    "operationId": "resolveCode",
                    "summary": "Exchange a one-time code for a join token (answerer); the code is consumed",
                    "requestBody": {
                        "required": true,
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ResolveRequest" } } }
                    },
                    "responses": {
                        "200": ok("ResolveResponse", "Code consumed; token for the call"),
                        "400": error_response("Malformed JSON or code"),
                        "404": error_response("Unknown, used or expired code, or the call is gone"),
                        "410": error_response("The call has ended"),
                        "413": error_response("Body too large"),
                        "415": error_response("Body is not application/json"),
                        "429": too_many,
                        "503": unavailable
                    }
                }
            },
            "/api/join": {
                "post": {
                    "operationId": "join",
                    "summary": "Connection details for the token's participant: signaling URL, ICE servers with TURN credentials (10 min), ICE transport policy",
                    "security": [ { "bearerAuth": [] } ],
                    "responses": {
                        "200": ok("JoinResponse", "Join details"),
                        "401": unauthorized,
                        "404": error_response("The call does not exist (expired)"),
                        "410": error_response("The call has ended"),
                        "413": error_response("Body too large"),
                        "429": too_many,
                        "503": unavailable
                    }
                }
            },
            "/api/call/{callId}": {
                "get": {
                    "operationId": "callStatus",
                    "summary": "Status of the token's own call",
                    "security": [ { "bearerAuth": [] } ],
                    "parameters": [ {
                        "name": "callId", "in": "path", "required": true,
                        "schema": { "$ref": "#/components/schemas/CallId" }
                    } ],
                    "responses": {
                        "200": ok("CallStatusResponse", "Call status"),
                        "400": error_response("Malformed callId"),
                        "401": error_response("Missing, invalid or expired join token"),
                        "403": error_response("The token belongs to another call"),
                        "404": error_response("No such call"),
                        "429": retry_response("Rate limit exceeded"),
                        "503": retry_response("State store unreachable; retry later")
                    }
                }
            },
            "/api/call/end": {
                "post": {
                    "operationId": "endCall",
                    "summary": "End the token's call for everyone (idempotent); signaling closes both sockets",
                    "security": [ { "bearerAuth": [] } ],
                    "responses": {
                        "200": ok("CallStatusResponse", "Call ended"),
                        "401": error_response("Missing, invalid or expired join token"),
                        "404": error_response("No such call"),
                        "413": error_response("Body too large"),
                        "429": retry_response("Rate limit exceeded"),
                        "503": retry_response("State store unreachable; retry later")
                    }
                }
            },
            "/api/call/code": {
                "post": {
                    "operationId": "newCode",
                    "summary": "A fresh one-time code (15 min, single use) for the token's own live call, to invite again; it admits the role the caller does not have. At most 10 per call per 15 min",
                    "security": [ { "bearerAuth": [] } ],
                    "responses": {
                        "201": ok("NewCodeResponse", "Code created"),
                        "401": error_response("Missing, invalid or expired join token"),
                        "403": error_response("Observers cannot invite"),
                        "404": error_response("No such call (expired)"),
                        "410": error_response("The call has ended"),
                        "413": error_response("Body too large"),
                        "429": retry_response("Rate limit exceeded (per IP, or new codes per call)"),
                        "503": retry_response("State store unreachable; retry later")
                    }
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "The process is up",
                    "responses": { "200": ok("Status", "Up") }
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Redis answers PING",
                    "responses": {
                        "200": ok("Status", "Ready"),
                        "503": retry_response("Redis unreachable")
                    }
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Metrics in the OpenMetrics text format (Prometheus scrapes it)",
                    "responses": {
                        "200": { "description": "Metrics", "content": { "application/openmetrics-text": { "schema": { "type": "string" } } } }
                    }
                }
            }
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" }
            },
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before retrying",
                    "schema": { "type": "string", "pattern": "^[0-9]+$" }
                }
            },
            "schemas": {
                "CallId": {
                    "type": "string",
                    "description": "26 characters of lowercase Crockford base32",
                    "pattern": "^[0-9a-hjkmnp-tv-z]{26}$"
                },
                "ParticipantId": {
                    "type": "string",
                    "pattern": "^[0-9a-hjkmnp-tv-z]{26}$"
                },
                "CreateCallResponse": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["callId", "code", "token", "codeExpiresAt"],
                    "properties": {
                        "callId": { "$ref": "#/components/schemas/CallId" },
                        "code": { "type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{6}$", "description": "One-time code (Crockford base32)" },
                        "token": { "type": "string", "description": "Join token (JWT HS256, role offerer, 24 h)" },
                        "codeExpiresAt": { "type": "integer", "minimum": 0, "description": "Unix seconds" }
                    }
                },
                "NewCodeResponse": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["callId", "code", "codeExpiresAt"],
                    "properties": {
                        "callId": { "$ref": "#/components/schemas/CallId" },
                        "code": { "type": "string", "pattern": "^[0-9A-HJKMNP-TV-Z]{6}$", "description": "One-time code (Crockford base32)" },
                        "codeExpiresAt": { "type": "integer", "minimum": 0, "description": "Unix seconds" }
                    }
                },
                "ResolveRequest": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["code"],
                    "properties": {
                        "code": {
                            "type": "string",
                            "maxLength": 64,
                            "pattern": "^[ \\t-]*([0-9A-TV-Za-tv-z][ \\t-]*){6}$",
                            "description": "As typed: case, spaces and dashes are ignored; O→0, I/L→1"
                        }
                    }
                },
                "ResolveResponse": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["callId", "token"],
                    "properties": {
                        "callId": { "$ref": "#/components/schemas/CallId" },
                        "token": { "type": "string", "description": "Join token (role answerer)" }
                    }
                },
                "IceServer": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["urls"],
                    "properties": {
                        "urls": { "type": "array", "minItems": 1, "items": { "type": "string", "pattern": "^(stun|turn|turns):" } },
                        "username": { "type": "string", "description": "TURN REST username <expiry>:<participantId>" },
                        "credential": { "type": "string", "description": "base64 HMAC-SHA1 of the username" }
                    }
                },
                "JoinResponse": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["callId", "participantId", "role", "signalUrl", "iceServers", "iceTransportPolicy"],
                    "properties": {
                        "callId": { "$ref": "#/components/schemas/CallId" },
                        "participantId": { "$ref": "#/components/schemas/ParticipantId" },
                        "role": { "type": "string", "enum": ["offerer", "answerer", "observer"] },
                        "signalUrl": { "type": "string" },
                        "iceServers": { "type": "array", "items": { "$ref": "#/components/schemas/IceServer" } },
                        "iceTransportPolicy": { "type": "string", "enum": ["all", "relay"] }
                    }
                },
                "CallStatusResponse": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["callId", "status", "createdAt", "participants", "observers"],
                    "properties": {
                        "callId": { "$ref": "#/components/schemas/CallId" },
                        "status": { "type": "string", "enum": ["created", "active", "ended"] },
                        "createdAt": { "type": "integer", "minimum": 0 },
                        "endedAt": { "type": "integer", "minimum": 0 },
                        "participants": {
                            "type": "integer", "minimum": 0,
                            "description": "media participants (offerer, answerer) holding a seat, connected or within their reconnect grace; 0 once ended"
                        },
                        "observers": {
                            "type": "integer", "minimum": 0,
                            "description": "observers connected (they take no seat and are invisible to media participants); 0 once ended"
                        }
                    }
                },
                "Status": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["status"],
                    "properties": { "status": { "type": "string" } }
                },
                "ErrorBody": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["code", "message"],
                            "properties": {
                                "code": { "type": "string", "pattern": "^[a-z]+(-[a-z]+)*$" },
                                "message": { "type": "string" }
                            }
                        }
                    }
                }
            }
        }
    })
}

/// The serialised document, built once at start-up.
pub fn document_bytes() -> bytes::Bytes {
    bytes::Bytes::from(document().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ref_resolves() {
        let doc = document();
        let text = doc.to_string();
        for piece in text.split("\"$ref\":\"#/components/").skip(1) {
            let path = piece.split('"').next().expect("ref path");
            let mut node = &doc["components"];
            for seg in path.split('/') {
                node = &node[seg];
            }
            assert!(!node.is_null(), "dangling $ref {path}");
        }
    }
}
