/* twilio_enqueue and what it reads */
