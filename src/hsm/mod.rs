//! PKCS#11 through cryptoki: master key, receipt key and the in-HSM release wrap.
