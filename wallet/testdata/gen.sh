#!/bin/sh
# gen.sh regenerates the signature vectors in this directory with openssl, a
# tool independent of the Go code they test. The tests only read the files:
# they never run this script or openssl.
#
#   ./gen.sh            re-sign every vector with the keys already here
#   ./gen.sh -newkeys   make fresh keys first (then every .sig changes too)
#
# RSASSA-PKCS1-v1_5 with SHA-256 is deterministic: one key and one content give
# exactly one signature, so wallet.Sign must reproduce these bytes exactly and
# wallet.Verify must accept them.
#
# Keys (RSA-2048 unless said otherwise; test-only, never use them anywhere else):
#   merchant_pkcs8.pem          private, PEM PKCS#8 ("PRIVATE KEY", openssl genpkey)
#   merchant_pkcs1.pem          the same key, PEM PKCS#1 ("RSA PRIVATE KEY", openssl rsa -traditional)
#   merchant_pkcs8.b64          the same key, bare base64 of the PKCS#8 DER, one line, no armour
#   merchant_pkcs8_wrapped.b64  the same, wrapped at 64 columns
#   merchant_public.pem         public half, PEM PKIX ("PUBLIC KEY")
#   merchant_public.b64         public half, bare base64 of the PKIX DER, one line
#   merchant_public_pkcs1.pem   public half, PEM PKCS#1 ("RSA PUBLIC KEY")
#   wallet_pkcs8.pem            the wallet's key pair: signs responses, and is the
#   wallet_public.pem           "wrong key" for merchant vectors
#   ec_pkcs8.pem ec_public.pem  a P-256 key pair: valid keys that are not RSA
#
# Vectors (NAME below; key: merchant for requests, wallet for responses):
#   vectors/NAME.content   the exact bytes signed: "POST <uri>\n<Client-Id>.<time>.<body>"
#   vectors/NAME.sig       openssl dgst -sha256 -sign KEY, standard base64, one line
#   vectors/NAME.sig.url   the same, URL-encoded as in the Signature header (+ / = as %2B %2F %3D)
# wallet/vectors_test.go lists the same parts and checks that wallet.SigningContent
# rebuilds each .content byte for byte: keep the two in step.
set -eu
cd "$(dirname "$0")"

if [ "${1:-}" = "-newkeys" ] || [ ! -f merchant_pkcs8.pem ]; then
	openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out merchant_pkcs8.pem
	openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out wallet_pkcs8.pem
	openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec_pkcs8.pem
fi
openssl rsa -in merchant_pkcs8.pem -traditional -out merchant_pkcs1.pem 2>/dev/null
openssl pkey -in merchant_pkcs8.pem -outform DER | openssl base64 -A >merchant_pkcs8.b64
echo >>merchant_pkcs8.b64
openssl pkey -in merchant_pkcs8.pem -outform DER | openssl base64 >merchant_pkcs8_wrapped.b64
openssl pkey -in merchant_pkcs8.pem -pubout -out merchant_public.pem
openssl pkey -in merchant_pkcs8.pem -pubout -outform DER | openssl base64 -A >merchant_public.b64
echo >>merchant_public.b64
openssl rsa -in merchant_pkcs8.pem -RSAPublicKey_out -out merchant_public_pkcs1.pem 2>/dev/null
openssl pkey -in wallet_pkcs8.pem -pubout -out wallet_public.pem
openssl pkey -in ec_pkcs8.pem -pubout -out ec_public.pem

rm -rf vectors
mkdir vectors

# vector NAME KEY METHOD URI CLIENT_ID TIME BODY
vector() {
	f=vectors/$1
	printf '%s %s\n%s.%s.%s' "$3" "$4" "$5" "$6" "$7" >"$f.content"
	openssl dgst -sha256 -sign "$2" -out "$f.bin" "$f.content"
	openssl base64 -A -in "$f.bin" >"$f.sig"
	echo >>"$f.sig"
	sed 's/+/%2B/g; s#/#%2F#g; s/=/%3D/g' "$f.sig" >"$f.sig.url"
	rm "$f.bin"
}

# The documented example: applyToken, ISO 8601 time with milliseconds and offset.
vector apply_token merchant_pkcs8.pem POST /v1/authorizations/applyToken \
	TEST_CLIENT 2019-05-28T12:12:12.000+08:00 \
	'{"grantType":"AUTHORIZATION_CODE","authCode":"abc"}'

# A base-URL path prefix and a query string are part of the signed URI;
# an escaped quote inside a JSON string stays as sent.
vector prefix_query merchant_pkcs8.pem POST '/openapi/v1/users/inquiryUserInfo?lang=en&region=TH' \
	TEST_5X00000000000000 2024-02-29T23:59:59.999-03:30 \
	'{"accessToken":"at_123","extendInfo":"{\"k\":\"v\"}"}'

# Request-Time as Unix milliseconds (the official Go SDK).
vector unix_ms merchant_pkcs8.pem POST /v2/authorizations/applyToken \
	TEST_CLIENT 1716890000123 \
	'{"grantType":"REFRESH_TOKEN","refreshToken":"rt_abc","appId":"app1"}'

# Non-ASCII UTF-8 in the body, signed as raw UTF-8 bytes (not \u escapes);
# Request-Time as Unix nanoseconds (older SDKs).
vector utf8_body merchant_pkcs8.pem POST /v1/users/inquiryUserInfo \
	TEST_CLIENT 1716890000123456789 \
	'{"accessToken":"at_1","extendInfo":"ผู้ใช้ 用户 Grüße €"}'

# An empty body: the content ends with the second dot.
vector empty_body merchant_pkcs8.pem POST /v1/ping \
	TEST_CLIENT 2019-05-28T04:12:12.000Z \
	''

# A trailing newline in the body is signed like any other byte.
vector trailing_newline merchant_pkcs8.pem POST /v1/authorizations/applyToken \
	TEST_CLIENT 2019-05-28T12:12:12.000+08:00 \
	'{"grantType":"AUTHORIZATION_CODE","authCode":"abc"}
'

# A response, signed by the wallet over Response-Time and the response body.
vector response_apply_token wallet_pkcs8.pem POST /v1/authorizations/applyToken \
	TEST_CLIENT 2019-05-28T12:12:13.123+08:00 \
	'{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"},"accessToken":"281010033AB2F588D14B43238637264FCA5AAF35xxxx","accessTokenExpiryTime":"2019-06-06T12:12:12+08:00","refreshToken":"2810100334F62CBC577F468AAC87CFC6C9107811xxxx","refreshTokenExpiryTime":"2019-06-08T12:12:12+08:00","customerId":"1000001119398804xxxx"}'
