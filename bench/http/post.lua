-- wrk script: POST a small text payload, as a sensor would.
wrk.method = "POST"
wrk.body = "21.5"
wrk.headers["Content-Type"] = "text/plain"
