import json, qrcode
out = []
for text, version, mask in [("hello, world", 1, 0), ("Hermes", 1, 4), ("https://call.example.com/c/7KQ2ZD", 3, 2), ("http://127.0.0.1:41234/c/ABCDEF", 3, 5),
                            ("https://hermes.example.org/c/0123AB?x=" + "y"*60, 7, 3), ("Hermes ✓ " * 19, 10, 6), ("a", 2, 7)]:
    q = qrcode.QRCode(version=version, error_correction=qrcode.constants.ERROR_CORRECT_M, border=0, mask_pattern=mask)
    q.add_data(text.encode('utf-8'), optimize=0)
    q.make(fit=False)
    rows = [''.join('1' if v else '0' for v in row) for row in q.get_matrix()]
    out.append({"text": text, "version": version, "mask": mask, "rows": rows})
print(json.dumps(out))
