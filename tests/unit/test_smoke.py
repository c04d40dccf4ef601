from tests.helpers import csrf_token, redemption_code


def test_creator_signs_in_claims_and_gets_code(app, client, factory, signed_in, smtp_server):
    program = factory.program(quota=5)
    factory.creators(program, ["ayesha@example.com"])
    factory.codes(program, ["HS-AAAA-0001", "HS-AAAA-0002"])
    signed_in("ayesha@example.com")
    page = client.get("/programs/headspace-6m")
    assert page.status_code == 200 and "Claim" in page.text
    response = client.post("/programs/headspace-6m/claim",
                           data={"csrf_token": csrf_token(page.text)})
    assert response.status_code == 302
    mail = smtp_server.wait_for_mail("ayesha@example.com", "code")[0]
    assert redemption_code(mail) == "HS-AAAA-0001"
    assert "HS-AAAA-0001" in client.get("/programs/headspace-6m").text
